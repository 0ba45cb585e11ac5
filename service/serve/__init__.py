"""Serving on every core: a supervisor process and N worker processes on one listening socket."""
