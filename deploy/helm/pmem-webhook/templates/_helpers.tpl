{{/*
Name of every namespaced object and of the MutatingWebhookConfiguration. A release called
"pmem-webhook" (the documented one) gets exactly the names of the kustomize base.
*/}}
{{- define "pmem-webhook.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pmem-webhook.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{- define "pmem-webhook.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: pmem-webhook
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pmem-webhook.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- define "pmem-webhook.servingCertName" -}}
{{ include "pmem-webhook.fullname" . }}-serving-cert
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "pmem-webhook.validate" -}}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "webhook.failurePolicy %q: want Fail (reject annotated pods while the webhook is unreachable) or Ignore (admit them unmodified)" .Values.webhook.failurePolicy) -}}
{{- end -}}
{{- if not (has .Values.certs.mode (list "certManager" "selfSigned")) -}}
{{- fail (printf "certs.mode %q: want certManager (cert-manager issues the certificate) or selfSigned (the webhook issues it and writes the caBundle)" .Values.certs.mode) -}}
{{- end -}}
{{- if not (has .Values.injection.defaultStorageClass .Values.injection.allowedStorageClasses) -}}
{{- fail (printf "injection.defaultStorageClass %q is not in injection.allowedStorageClasses %v: add it there" .Values.injection.defaultStorageClass .Values.injection.allowedStorageClasses) -}}
{{- end -}}
{{- range $k, $v := .Values.injection.kmemNodeSelector -}}
{{- if or (eq $k "") (contains "," $k) (contains "=" $k) -}}
{{- fail (printf "injection.kmemNodeSelector key %q: want a label key without ',' or '='" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
