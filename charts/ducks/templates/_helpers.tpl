{{/* Names, labels and the pieces every workload shares. */}}

{{- define "ducks.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-ducks, or the release name when it already says ducks; at most 50 characters so
     that "-worker-config" and the like still fit in 63. */}}
{{- define "ducks.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select one component's pods: call with (dict "ctx" $ "component" "worker"). */}}
{{- define "ducks.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ducks.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every object's labels: call with (dict "ctx" $ "component" "worker"). */}}
{{- define "ducks.labels" -}}
{{ include "ducks.selectorLabels" . }}
app.kubernetes.io/part-of: ducks
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "ducks.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ducks.runnerImage" -}}
{{- printf "%s:%s" .Values.runner.image.repository (default .Chart.AppVersion .Values.runner.image.tag) -}}
{{- end -}}

{{/* The Secret with the chart's secrets: the user's, or the chart's own. */}}
{{- define "ducks.secretName" -}}
{{- default (include "ducks.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The Secret with the S3 keys, or nothing when neither keys nor a Secret are given (the
     standard AWS chain: IRSA, instance metadata). */}}
{{- define "ducks.s3SecretName" -}}
{{- if .Values.s3.existingSecret -}}
{{- .Values.s3.existingSecret -}}
{{- else if or .Values.s3.accessKeyId .Values.s3.secretAccessKey -}}
{{- printf "%s-s3" (include "ducks.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "ducks.redisHost" -}}
{{- printf "%s-redis" (include "ducks.fullname" .) -}}
{{- end -}}

{{/* The API's public address: api.publicUrl, else the ingress host. */}}
{{- define "ducks.publicUrl" -}}
{{- if .Values.api.publicUrl -}}
{{- .Values.api.publicUrl -}}
{{- else if and .Values.api.ingress.enabled .Values.api.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.api.ingress.tls.enabled) .Values.api.ingress.host -}}
{{- end -}}
{{- end -}}

{{/* The pod-level security context of every DUCKS pod: the images' user (docker/*.Dockerfile). */}}
{{- define "ducks.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ducks.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* Scheduling of the chart's own pods. */}}
{{- define "ducks.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* One environment variable from the chart's Secret, absent when the Secret lacks it (the
     process then says which setting is missing): (dict "ctx" $ "key" "DUCKS_API__PEPPER"). */}}
{{- define "ducks.secretEnv" -}}
- name: {{ .key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ducks.secretName" .ctx }}
      key: {{ .key }}
      optional: true
{{- end -}}

{{/* What every DUCKS process needs: the Redis URL, the settings, and /tmp. The Redis URL of the
     in-chart Redis is no secret, unless it carries the password, which comes from the Secret and
     is put in by Kubernetes' $(VAR) expansion. */}}
{{- define "ducks.redisEnv" -}}
{{- if .Values.redis.internal.enabled }}
{{- if .Values.redis.internal.auth }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "ducks.secretName" . }}
      key: REDIS_PASSWORD
- name: DUCKS_REDIS__URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/" (include "ducks.redisHost" .) | quote }}
{{- else }}
- name: DUCKS_REDIS__URL
  value: {{ printf "redis://%s:6379/" (include "ducks.redisHost" .) | quote }}
{{- end }}
{{- else }}
- name: DUCKS_REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ducks.secretName" . }}
      key: DUCKS_REDIS__URL
{{- end }}
{{- end -}}

{{- define "ducks.s3EnvFrom" -}}
{{- with include "ducks.s3SecretName" . }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- end -}}

{{/* Probes on the port named http: alive as long as the process serves, ready when it can work. */}}
{{- define "ducks.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{/* NetworkPolicy egress every DUCKS process needs: DNS, and Redis. */}}
{{- define "ducks.egressDnsAndRedis" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- if .Values.redis.internal.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "ducks.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - port: 6379
      protocol: TCP
{{- else }}
- ports:
    - port: {{ .Values.networkPolicy.externalRedis.port | int64 }}
      protocol: TCP
  {{- with .Values.networkPolicy.externalRedis.cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end -}}
{{/* NetworkPolicy egress to these ports anywhere: (dict "ports" (list 443)). */}}
{{- define "ducks.egressOutside" -}}
- ports:
    {{- range .ports }}
    - port: {{ . | int64 }}
      protocol: TCP
    {{- end }}
{{- end -}}
{{/* NetworkPolicy ingress of scrapers to the port named http. */}}
{{- define "ducks.metricsIngress" -}}
- ports:
    - port: http
      protocol: TCP
  from:
    - podSelector: {}
    {{- with .Values.networkPolicy.metricsFrom }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
