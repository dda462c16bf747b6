{{/* Names and labels shared by every object. */}}
{{- define "runbot.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "runbot.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "runbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "runbot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "runbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "runbot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "runbot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "runbot.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The database URL Secret: the user's, or the one this chart creates from database.url. */}}
{{- define "runbot.databaseSecret" -}}
{{- default (printf "%s-database" (include "runbot.fullname" .)) .Values.database.existingSecret -}}
{{- end -}}

{{- define "runbot.runbooksConfigMap" -}}
{{- default (printf "%s-runbooks" (include "runbot.fullname" .)) .Values.runbooks.existingConfigMap -}}
{{- end -}}

{{/* The service account token is mounted only where something uses it (Vault Kubernetes auth). */}}
{{- define "runbot.needsToken" -}}
{{- if and .Values.vault.enabled (eq .Values.vault.authMethod "kubernetes") -}}true{{- end -}}
{{- end -}}
