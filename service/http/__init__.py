"""HTTP: thin FastAPI routers that translate requests into calls on `service.core` and back."""
