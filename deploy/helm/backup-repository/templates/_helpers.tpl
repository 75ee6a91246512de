{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "backup-repository.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "backup-repository.fullname" -}}
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

{{- define "backup-repository.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "backup-repository.selectorLabels" -}}
app.kubernetes.io/name: {{ include "backup-repository.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "backup-repository.labels" -}}
helm.sh/chart: {{ include "backup-repository.chart" . }}
{{ include "backup-repository.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "backup-repository.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "backup-repository.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "backup-repository.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart's own Secret (generated values and values given in values.yaml). */}}
{{- define "backup-repository.secretName" -}}
{{- include "backup-repository.fullname" . }}
{{- end }}

{{- define "backup-repository.jwtSecretName" -}}
{{- default (include "backup-repository.secretName" .) .Values.jwt.existingSecret }}
{{- end }}

{{- define "backup-repository.jwtSecretKey" -}}
{{- if .Values.jwt.existingSecret }}{{ .Values.jwt.existingSecretKey }}{{ else }}jwt-secret-key{{ end }}
{{- end }}

{{/* Shapes ------------------------------------------------------------------------------ */}}

{{/* "true" when more than one pod may run at once. */}}
{{- define "backup-repository.scaledOut" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "backup-repository.storageUrl" -}}
{{- default "file:///data/storage" .Values.storage.url }}
{{- end }}

{{- define "backup-repository.fileStorage" -}}
{{- if hasPrefix "file://" (include "backup-repository.storageUrl" .) }}true{{ end }}
{{- end }}

{{/* Refuse combinations that cannot work or would lose data, with the value to change. */}}
{{- define "backup-repository.validate" -}}
{{- $db := .Values.database.type }}
{{- if not (has $db (list "sqlite" "postgres")) }}
{{- fail (printf "database.type must be sqlite or postgres, got %q" $db) }}
{{- end }}
{{- if not (has .Values.config.provider (list "kubernetes" "filesystem")) }}
{{- fail (printf "config.provider must be kubernetes or filesystem, got %q" .Values.config.provider) }}
{{- end }}
{{- if and (eq .Values.config.provider "filesystem") (not .Values.config.filesystem.volume) }}
{{- fail "config.provider=filesystem needs config.filesystem.volume (the volume holding the YAML objects)" }}
{{- end }}
{{- if include "backup-repository.scaledOut" . }}
{{- if eq $db "sqlite" }}
{{- fail "database.type=sqlite allows a single replica only (replicaCount=1, autoscaling.enabled=false): SQLite lives on one pod's volume. Use database.type=postgres for more replicas." }}
{{- end }}
{{- if and (include "backup-repository.fileStorage" .) (not (and .Values.persistence.enabled (has "ReadWriteMany" .Values.persistence.accessModes))) }}
{{- fail "several replicas need shared storage: set storage.url to a bucket (s3://, gs://, azblob://), or a persistence volume with accessModes ReadWriteMany for file://" }}
{{- end }}
{{- end }}
{{- if eq $db "postgres" }}
{{- if and (not .Values.database.postgres.urlSecret.name) (or (not .Values.database.postgres.host) (not .Values.database.postgres.name)) }}
{{- fail "database.type=postgres needs database.postgres.host and database.postgres.name (or database.postgres.urlSecret.name)" }}
{{- end }}
{{- end }}
{{- if and .Values.jwt.secretKey (lt (len .Values.jwt.secretKey) 16) }}
{{- fail "jwt.secretKey must have at least 16 characters" }}
{{- end }}
{{- if and .Values.server.metricsProtected (not .Values.healthCheck.key) }}
{{- fail "server.metricsProtected needs healthCheck.key (the code /metrics then asks for)" }}
{{- end }}
{{- end }}

{{/* Whether the chart's own Secret has anything to hold. */}}
{{- define "backup-repository.ownSecretNeeded" -}}
{{- $pg := .Values.database.postgres }}
{{- if or (not .Values.jwt.existingSecret) .Values.healthCheck.key (and (eq .Values.database.type "postgres") $pg.password (not $pg.passwordSecret.name)) (and (not .Values.storage.s3.existingSecret) .Values.storage.s3.accessKeyId) (and .Values.redis.url (not .Values.redis.existingSecret)) }}true{{ end }}
{{- end }}
