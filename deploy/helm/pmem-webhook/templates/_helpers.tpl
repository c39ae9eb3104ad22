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

{{/*
The minimum Kubernetes version, checked against the version Helm renders for: the cluster's for
`helm install`/`upgrade`, --kube-version when given. An older API server would silently drop the
webhook's matchConditions (GA in 1.30) and send every pod to a failurePolicy Fail webhook.

Without a cluster (`helm template`, `helm install --dry-run`) Helm renders for its built-in default
capabilities, whose version is v1.20.0 unless the helm binary was linked with a newer one (release
builds are). That default must render, or `helm template | kubectl apply -f -` cannot work. It is
told apart from a real v1.20.0 cluster by its API versions: Helm's default set is its client
library's full list, which has flowcontrol.apiserver.k8s.io/v1, GA in 1.29; a 1.20 API server
never serves it. So only an explicit `--kube-version 1.20.0` passes unchecked.
*/}}
{{- define "pmem-webhook.requireKubeVersion" -}}
{{- $version := .Capabilities.KubeVersion.Version -}}
{{- $helmDefault := and (eq $version "v1.20.0") (.Capabilities.APIVersions.Has "flowcontrol.apiserver.k8s.io/v1") -}}
{{- if and (not $helmDefault) (semverCompare "<1.30.0-0" $version) -}}
{{- fail (printf "pmem-webhook needs Kubernetes 1.30 or newer, this cluster is %s: the webhook configuration's matchConditions are GA from 1.30, and without them every pod is sent to the webhook (docs/deploy.md: Older clusters without matchConditions)" $version) -}}
{{- end -}}
{{- end -}}

{{/* Cross-field checks the JSON schema cannot express. */}}
{{- define "pmem-webhook.validate" -}}
{{- include "pmem-webhook.requireKubeVersion" . -}}
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
