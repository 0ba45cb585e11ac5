{{/*
Expand the name of the chart.
*/}}
{{- define "omr-classifier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (truncated at 63 chars: some Kubernetes name fields are limited to this).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "omr-classifier.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "omr-classifier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "omr-classifier.labels" -}}
helm.sh/chart: {{ include "omr-classifier.chart" . }}
{{ include "omr-classifier.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{/*
Selector labels (immutable on a Deployment: never add to these).
*/}}
{{- define "omr-classifier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "omr-classifier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "omr-classifier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "omr-classifier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image: the CPU tag, or the GPU tag when gpu.enabled.
*/}}
{{- define "omr-classifier.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.gpu.enabled }}
{{- $tag = .Values.image.gpuTag | default (printf "%s-gpu" .Chart.AppVersion) }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + the service's shutdown delay + its drain timeout + 10 s margin,
or the explicit value, which must be larger than that sum (otherwise the kubelet SIGKILLs a draining pod).
*/}}
{{- define "omr-classifier.drainSeconds" -}}
{{- $c := .Values.config }}
{{- $sum := addf (.Values.preStopSleepSeconds | default 0) ($c.shutdownDelayS | default 2) ($c.drainTimeoutS | default 20) }}
{{- ceil $sum | int }}
{{- end }}

{{- define "omr-classifier.terminationGracePeriodSeconds" -}}
{{- $need := include "omr-classifier.drainSeconds" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $need 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $need }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds + config.shutdownDelayS + config.drainTimeoutS (%d), or in-flight requests are killed" .Values.terminationGracePeriodSeconds $need) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Where the service reads its model repository from.
*/}}
{{- define "omr-classifier.modelRepository" -}}
{{- if eq .Values.model.source "image" }}/app/models/repository{{ else }}{{ .Values.model.mountPath }}{{ end }}
{{- end }}

{{- define "omr-classifier.trtCacheClaim" -}}
{{- if .Values.gpu.trtCache.existingClaim }}
{{- .Values.gpu.trtCache.existingClaim }}
{{- else if .Values.gpu.trtCache.create }}
{{- printf "%s-trt-cache" (include "omr-classifier.fullname" .) }}
{{- end }}
{{- end }}
