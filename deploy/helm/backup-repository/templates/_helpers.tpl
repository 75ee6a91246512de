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
{{- include "backup-repository.validateNetwork" . }}
{{- include "backup-repository.validateSecrets" . }}
{{- end }}

{{/* Who may claim client addresses (server.trustedProxies) and who may reach the port
     (networkPolicy). */}}
{{- define "backup-repository.validateNetwork" -}}
{{- range $entry := splitList "," (toString .Values.server.trustedProxies) }}
{{- if hasSuffix "/0" (trim $entry) }}
{{- fail (printf "server.trustedProxies must not hold %s: every address in it may claim any client address, past restrictByIP and the rate limits. Give the ingress controller's addresses or pod CIDRs (docs/deployment.md)" (trim $entry)) }}
{{- end }}
{{- end }}
{{- $np := .Values.networkPolicy }}
{{- if $np.enabled }}
{{- range $name := list "ingressController" "prometheus" "extraFrom" }}
{{- $peers := index $np $name }}
{{- if and $peers (not (kindIs "slice" $peers)) }}
{{- fail (printf "networkPolicy.%s must be a list of NetworkPolicy peers (podSelector, namespaceSelector, ipBlock)" $name) }}
{{- end }}
{{- range $i, $peer := $peers }}
{{- if not (and (kindIs "map" $peer) (or (hasKey $peer "podSelector") (hasKey $peer "namespaceSelector") (hasKey $peer "ipBlock"))) }}
{{- fail (printf "networkPolicy.%s[%d] needs podSelector, namespaceSelector or ipBlock (an empty selector {} matches everything)" $name $i) }}
{{- end }}
{{- if and (hasKey $peer "ipBlock") (or (hasKey $peer "podSelector") (hasKey $peer "namespaceSelector")) }}
{{- fail (printf "networkPolicy.%s[%d]: ipBlock cannot be combined with a selector in one peer: give it as a peer of its own" $name $i) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $exposure := list "ingress" "route" }}
{{- if and (index $.Values $exposure).enabled (not $np.ingressController) }}
{{- fail (printf "%s.enabled needs networkPolicy.ingressController (the ingress controller's pods), or the NetworkPolicy keeps it out; turn networkPolicy.enabled off only where nothing else can reach the pods" $exposure) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* secrets.type: plain values in the chart's Secret, or sealed ones in a SealedSecret. */}}
{{- define "backup-repository.validateSecrets" -}}
{{- $type := .Values.secrets.type }}
{{- $sealed := .Values.secrets.encryptedData | default dict }}
{{- if not (has $type (list "plain" "sealedSecrets")) }}
{{- fail (printf "secrets.type must be plain or sealedSecrets, got %q" $type) }}
{{- end }}
{{- if eq $type "plain" }}
{{- if $sealed }}
{{- fail "secrets.encryptedData is read only with secrets.type=sealedSecrets: set that, or give the secrets as plain values instead" }}
{{- end }}
{{- else }}
{{- if not $sealed }}
{{- fail "secrets.type=sealedSecrets needs secrets.encryptedData (values sealed with kubeseal, see docs/deployment.md); when every secret is in an existing Secret, keep secrets.type=plain" }}
{{- end }}
{{- $plain := dict "jwt.secretKey" (list .Values.jwt.secretKey "jwt-secret-key") "database.postgres.password" (list .Values.database.postgres.password "db-password") "storage.s3.accessKeyId" (list .Values.storage.s3.accessKeyId "AWS_ACCESS_KEY_ID") "storage.s3.secretAccessKey" (list .Values.storage.s3.secretAccessKey "AWS_SECRET_ACCESS_KEY") "redis.url" (list .Values.redis.url "redis-url") }}
{{- range $value := keys $plain | sortAlpha }}
{{- $entry := index $plain $value }}
{{- if index $entry 0 }}
{{- fail (printf "%s is a plain secret, refused with secrets.type=sealedSecrets: seal it with kubeseal and give it as secrets.encryptedData.%s" $value (index $entry 1)) }}
{{- end }}
{{- end }}
{{- if and (not .Values.jwt.existingSecret) (not (hasKey $sealed "jwt-secret-key")) }}
{{- fail "secrets.type=sealedSecrets needs secrets.encryptedData.jwt-secret-key (the JWT key, sealed with kubeseal) or jwt.existingSecret: the chart cannot generate a key it cannot seal" }}
{{- end }}
{{- if and .Values.healthCheck.key (not (hasKey $sealed "health-check-key")) }}
{{- fail "healthCheck.key needs secrets.encryptedData.health-check-key with secrets.type=sealedSecrets: seal the same code (the server reads it from the Secret; the readiness probe, which cannot, sends healthCheck.key)" }}
{{- end }}
{{- if and (hasKey $sealed "health-check-key") (not .Values.healthCheck.key) }}
{{- fail "secrets.encryptedData.health-check-key needs healthCheck.key, the same code in clear: the readiness probe sends it, and cannot read a Secret" }}
{{- end }}
{{- if ne (hasKey $sealed "AWS_ACCESS_KEY_ID") (hasKey $sealed "AWS_SECRET_ACCESS_KEY") }}
{{- fail "secrets.encryptedData needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither" }}
{{- end }}
{{- range $key, $value := $sealed }}
{{- if not (regexMatch "^[-._a-zA-Z0-9]+$" $key) }}
{{- fail (printf "secrets.encryptedData: %q is not a valid Secret key (letters, digits, '-', '_' and '.')" $key) }}
{{- end }}
{{- if not (and (kindIs "string" $value) (regexMatch "^[A-Za-z0-9+/]{300,}={0,2}$" $value)) }}
{{- fail (printf "secrets.encryptedData.%s does not look sealed: give what kubeseal --raw prints (base64, several hundred characters), never the secret itself" $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The keys the chart's own Secret holds, as a JSON list: with secrets.type=plain those
     the values give (or the generated JWT key), with sealedSecrets the sealed ones. */}}
{{- define "backup-repository.ownSecretKeys" -}}
{{- $keys := list }}
{{- if eq .Values.secrets.type "sealedSecrets" }}
{{- $keys = keys (.Values.secrets.encryptedData | default dict) | sortAlpha }}
{{- else }}
{{- $pg := .Values.database.postgres }}
{{- if not .Values.jwt.existingSecret }}{{ $keys = append $keys "jwt-secret-key" }}{{ end }}
{{- if .Values.healthCheck.key }}{{ $keys = append $keys "health-check-key" }}{{ end }}
{{- if and (eq .Values.database.type "postgres") $pg.password (not $pg.passwordSecret.name) }}{{ $keys = append $keys "db-password" }}{{ end }}
{{- if and (not .Values.storage.s3.existingSecret) .Values.storage.s3.accessKeyId }}{{ $keys = concat $keys (list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY") }}{{ end }}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}{{ $keys = append $keys "redis-url" }}{{ end }}
{{- end }}
{{- toJson $keys }}
{{- end }}

{{/* Whether the chart renders a plain Secret of its own. */}}
{{- define "backup-repository.ownSecretNeeded" -}}
{{- if and (eq .Values.secrets.type "plain") (include "backup-repository.ownSecretKeys" . | fromJsonArray) }}true{{ end }}
{{- end }}
