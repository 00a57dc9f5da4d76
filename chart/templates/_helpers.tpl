{{/* Names ------------------------------------------------------------------------------ */}}
{{- define "cloudtaser.fullname" -}}
{{- if contains "cloudtaser" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-cloudtaser" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cloudtaser.operatorName" -}}{{ include "cloudtaser.fullname" . }}-operator{{- end -}}
{{- define "cloudtaser.agentName" -}}{{ include "cloudtaser.fullname" . }}-agent{{- end -}}
{{- define "cloudtaser.cleanupName" -}}{{ include "cloudtaser.fullname" . }}-cleanup{{- end -}}
{{- define "cloudtaser.settingsName" -}}{{ include "cloudtaser.fullname" . }}-settings{{- end -}}

{{- define "cloudtaser.operatorServiceAccount" -}}
{{- default (include "cloudtaser.operatorName" .) .Values.serviceAccounts.operator.name -}}
{{- end -}}
{{- define "cloudtaser.agentServiceAccount" -}}
{{- default (include "cloudtaser.agentName" .) .Values.serviceAccounts.agent.name -}}
{{- end -}}

{{- define "cloudtaser.tlsSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "cloudtaser.fullname" .)) .Values.webhook.tls.secretName -}}
{{- end -}}

{{/* The webhook's Service DNS name (the serving certificate's names and the webhook URL). */}}
{{- define "cloudtaser.webhookHost" -}}
{{- printf "%s.%s.svc" (include "cloudtaser.operatorName" .) .Release.Namespace -}}
{{- end -}}

{{/* The name the operator gives its MutatingWebhookConfiguration (engine/cloudtaser/engine/webhooks.py). */}}
{{- define "cloudtaser.webhookConfiguration" -}}cloudtaser-injector{{- end -}}

{{/* Labels ------------------------------------------------------------------------------ */}}
{{- define "cloudtaser.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: cloudtaser
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cloudtaser
{{- end -}}

{{- define "cloudtaser.selectorLabels" -}}
app.kubernetes.io/name: cloudtaser
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "cloudtaser.image" -}}
{{- $image := index .root.Values.images .name -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The OPA URL the operator asks, or "" when opa.mode is none. */}}
{{- define "cloudtaser.opaUrl" -}}
{{- if eq .Values.opa.mode "sidecar" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.opa.port) -}}
{{- else if eq .Values.opa.mode "external" -}}
{{- required "opa.url is required when opa.mode is external" .Values.opa.url -}}
{{- end -}}
{{- end -}}
