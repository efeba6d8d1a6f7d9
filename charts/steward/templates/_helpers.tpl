{{/* Names and labels shared by the templates. */}}

{{- define "steward.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "steward.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "steward.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "steward.serviceAccountName" -}}
{{- default (include "steward.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "steward.webhookService" -}}
{{- printf "%s-webhook" (include "steward.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "steward.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "steward.fullname" .) -}}
{{- end -}}

{{- define "steward.signingSecret" -}}
{{- default (printf "%s-signing-key" (include "steward.fullname" .)) .Values.signingKey.existingSecret -}}
{{- end -}}

{{- define "steward.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "steward.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) -}}
{{- end -}}

{{/* The namespaces no webhook ever looks at. */}}
{{- define "steward.systemNamespaces" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values: [kube-system, kube-public, kube-node-lease, {{ .Release.Namespace | quote }}]
{{- end -}}

{{/* clientConfig of a webhook at PATH: the Service, or webhook.url when set. */}}
{{- define "steward.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- $ca := index . 2 -}}
{{- if $root.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) $path | quote }}
{{- else }}
service:
  name: {{ include "steward.webhookService" $root }}
  namespace: {{ $root.Release.Namespace }}
  port: 443
  path: {{ $path | quote }}
{{- end }}
{{- if $ca }}
caBundle: {{ $ca }}
{{- end }}
{{- end -}}
