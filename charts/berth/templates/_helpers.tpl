{{/*
Expand the name of the chart.
*/}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "berth.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ include "berth.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: berth
{{- end }}

{{/*
Selector labels
*/}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "berth.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The Lease berth elects its leader with.  The name is fixed in the binary.
*/}}
{{- define "berth.leaseName" -}}
berth-operator
{{- end }}

{{/*
Checks across values that the schema cannot express with a useful message.
Included by the workload templates; renders nothing.
*/}}
{{- define "berth.validate" -}}
{{- if and (eq .Values.storage.type "filesystem") (gt (int .Values.replicas) 1) }}
{{- $rwx := has "ReadWriteMany" .Values.storage.filesystem.accessModes }}
{{- fail (printf "replicas=%d needs storage.type=s3: the filesystem store has a single writer (its uploads and tags are serialised by locks inside one process)%s, so it runs exactly one Pod" (int .Values.replicas) (ternary ", which a ReadWriteMany volume does not change" "" $rwx)) }}
{{- end }}
{{- if and (eq .Values.storage.type "filesystem") .Values.blobRedirect.minSize }}
{{- fail "blobRedirect.minSize needs storage.type=s3: only S3 can serve a blob by presigned URL" }}
{{- end }}
{{- if and (eq .Values.storage.type "s3") (not .Values.storage.s3.bucket) }}
{{- fail "storage.type=s3 needs storage.s3.bucket" }}
{{- end }}
{{- end }}

{{/*
The --storage argument for S3: s3://bucket or s3://bucket/prefix.
*/}}
{{- define "berth.s3Url" -}}
{{- $prefix := trimAll "/" .Values.storage.s3.prefix }}
{{- if $prefix }}
{{- printf "s3://%s/%s" .Values.storage.s3.bucket $prefix }}
{{- else }}
{{- printf "s3://%s" .Values.storage.s3.bucket }}
{{- end }}
{{- end }}

{{/*
The --registry-host argument: the host names under which workloads' images name
this registry (Triggers update containers whose image names one of them).
registryHosts, or else the ingress hosts and the Service's DNS names.
*/}}
{{- define "berth.registryHosts" -}}
{{- $hosts := list }}
{{- if .Values.registryHosts }}
{{- $hosts = .Values.registryHosts }}
{{- else }}
{{- if .Values.ingress.enabled }}
{{- range .Values.ingress.hosts }}
{{- $hosts = append $hosts .host }}
{{- end }}
{{- end }}
{{- $service := printf "%s.%s.svc" (include "berth.fullname" .) .Release.Namespace }}
{{- $hosts = append $hosts (printf "%s:%v" $service .Values.service.port) }}
{{- $hosts = append $hosts (printf "%s.cluster.local:%v" $service .Values.service.port) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/*
Anti-affinity spreading the replicas over nodes (podAntiAffinity): preferred (soft)
or required (hard).
*/}}
{{- define "berth.podAntiAffinity" -}}
{{- $term := dict "topologyKey" .Values.podAntiAffinity.topologyKey "labelSelector" (dict "matchLabels" (include "berth.selectorLabels" . | fromYaml)) -}}
podAntiAffinity:
  {{- if eq .Values.podAntiAffinity.type "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    {{- list $term | toYaml | nindent 4 }}
  {{- else if eq .Values.podAntiAffinity.type "soft" }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: {{ .Values.podAntiAffinity.weight }}
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
  {{- else }}
  {{- fail (printf "podAntiAffinity.type %q is not soft, hard or none" .Values.podAntiAffinity.type) }}
  {{- end }}
{{- end }}

{{/*
The Pod template shared by the StatefulSet (filesystem) and the Deployment (s3).
*/}}
{{- define "berth.podTemplate" -}}
metadata:
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  labels:
    {{- include "berth.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  serviceAccountName: {{ include "berth.serviceAccountName" . }}
  automountServiceAccountToken: true
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: berth
      image: "{{ .Values.image.repository }}:{{ include "berth.imageTag" . }}"
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - operator
        - --listen
        - "0.0.0.0:5000"
        - --data-dir
        - /var/lib/berth
        {{- if eq .Values.storage.type "s3" }}
        - --storage
        - {{ include "berth.s3Url" . | quote }}
        {{- end }}
        - --log-format
        - {{ .Values.logFormat | quote }}
        - --registry-host
        - {{ include "berth.registryHosts" . | quote }}
        - --service-account-audience
        - {{ join "," .Values.serviceAccountAudiences | quote }}
        {{- with .Values.blobRedirect }}
        {{- if .minSize }}
        - --blob-redirect-min-size
        - {{ .minSize | quote }}
        - --blob-redirect-expiry
        - {{ .expiry | quote }}
        {{- if .endpoint }}
        - --blob-redirect-endpoint
        - {{ .endpoint | quote }}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- if eq .Values.storage.type "s3" }}
        - --push-log-poll
        - {{ .Values.pushLog.poll | quote }}
        - --push-log-retention
        - {{ .Values.pushLog.retention | quote }}
        {{- end }}
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: BERTH_SIGNING_KEY_SECRET
          value: {{ include "berth.fullname" . }}-signing-key
        {{- if eq .Values.storage.type "s3" }}
        {{- with .Values.storage.s3 }}
        - name: AWS_REGION
          value: {{ .region | quote }}
        {{- if .endpoint }}
        - name: AWS_ENDPOINT
          value: {{ .endpoint | quote }}
        {{- end }}
        - name: AWS_ALLOW_HTTP
          value: {{ .allowHttp | quote }}
        {{- if .existingSecret }}
        - name: AWS_ACCESS_KEY_ID
          valueFrom:
            secretKeyRef:
              name: {{ .existingSecret }}
              key: AWS_ACCESS_KEY_ID
        - name: AWS_SECRET_ACCESS_KEY
          valueFrom:
            secretKeyRef:
              name: {{ .existingSecret }}
              key: AWS_SECRET_ACCESS_KEY
        {{- end }}
        {{- end }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: 5000
          protocol: TCP
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: data
          mountPath: /var/lib/berth
        - name: tmp
          mountPath: /tmp
  volumes:
    {{- if eq .Values.storage.type "s3" }}
    # Content lives in the bucket; this is scratch space only.
    - name: data
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir: {}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if and (gt (int .Values.replicas) 1) (ne .Values.podAntiAffinity.type "none") }}
  affinity:
    {{- include "berth.podAntiAffinity" . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
