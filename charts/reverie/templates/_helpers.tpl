{{/*
Naming, labels and small lookups shared by every template.
*/}}

{{- define "reverie.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reverie.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "reverie.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "reverie.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reverie
{{- end -}}

{{- define "reverie.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reverie.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "reverie.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "reverie.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "reverie.image" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces watched in "namespaces" scope, as a list. */}}
{{- define "reverie.watchedNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- toJson .Values.watch.namespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{- define "reverie.metricsServiceName" -}}
{{- printf "%s-metrics" (include "reverie.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reverie.webhookServiceName" -}}
{{- printf "%s-webhook" (include "reverie.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reverie.webhookSecretName" -}}
{{- if .Values.webhook.certManager.enabled -}}
{{- printf "%s-webhook-tls" (include "reverie.fullname" .) -}}
{{- else -}}
{{- required "webhook.existingSecret is required when webhook.certManager.enabled is false" .Values.webhook.existingSecret -}}
{{- end -}}
{{- end -}}
