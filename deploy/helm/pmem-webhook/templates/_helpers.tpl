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
`helm install`/`upgrade` (also with --dry-run, which asks the cluster), --kube-version when given.
An older API server would silently drop the webhook's matchConditions (GA in 1.30) and send every
pod to a failurePolicy Fail webhook.

`helm template` without --kube-version renders for Helm's built-in default capabilities; that must
render, or `helm template | kubectl apply -f -` cannot work. The default version is v1.20.0 in a
helm built without link flags (`go install`, a Go tool) and, in a release binary, the version of
its client-go, set at link time by helm's Makefile: v1.(N+15).0 for helm 3.N (3.14: v1.29.0,
3.15: v1.30.0). So the check is skipped when both hold:
- the capabilities are not a cluster's: Helm lists "<group/version>/<Kind>" entries only from a
  cluster's discovery, and every API server serves v1 Namespaces, so "v1/Namespace" is absent;
- the version is one of those defaults for this helm (.Capabilities.HelmVersion).
An explicit --kube-version equal to this helm's default (1.20.0, or 1.29.0 with helm 3.14) is
indistinguishable from it and renders; any other version below 1.30 fails.
*/}}
{{- define "pmem-webhook.requireKubeVersion" -}}
{{- $version := .Capabilities.KubeVersion.Version -}}
{{- $fromCluster := .Capabilities.APIVersions.Has "v1/Namespace" -}}
{{- $helmDefaults := list "v1.20.0" -}}
{{- /* Not semver: it fails the rendering on a version it cannot parse (an embedded helm's). */ -}}
{{- $helmVersion := .Capabilities.HelmVersion.Version | toString -}}
{{- if regexMatch "^v3\\.[0-9]+(\\.|$)" $helmVersion -}}
{{- $helmMinor := regexReplaceAll "^v3\\.([0-9]+).*$" $helmVersion "${1}" | atoi -}}
{{- $helmDefaults = append $helmDefaults (printf "v1.%d.0" (add $helmMinor 15)) -}}
{{- end -}}
{{- $helmDefault := and (not $fromCluster) (has $version $helmDefaults) -}}
{{- if and (not $helmDefault) (semverCompare "<1.30.0-0" $version) -}}
{{- fail (printf "pmem-webhook needs Kubernetes 1.30 or newer; Helm renders for %s (the cluster's version, or --kube-version): the webhook configuration's matchConditions are GA from 1.30, and without them every pod is sent to the webhook (docs/deploy.md: Older clusters without matchConditions)" $version) -}}
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
