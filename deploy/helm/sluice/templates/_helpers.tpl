{{/* Names and labels, in the usual Helm way. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
sluice.image: the image of a component. Args: root, image (the
component's image values).
*/}}
{{- define "sluice.image" -}}
{{- $img := .image -}}
{{- $root := .root -}}
{{- $tag := $img.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- if $root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $img.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
sluice.sinkID: a sink's name as a label value and DNS label: sink names may
hold upper case and "_". Args: root, sink.
*/}}
{{- define "sluice.sinkID" -}}
{{- .sink.name | lower | replace "_" "-" | trimAll "-" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
sluice.writerName: the name of a sink's Deployment, Service, autoscaler and
disruption budget; too long for a DNS label, it is cut and ends in a hash
of the sink's name, which keeps it unique. Args: root, sink.
*/}}
{{- define "sluice.writerName" -}}
{{- $full := printf "%s-writer-%s" (include "sluice.fullname" .root) (include "sluice.sinkID" .) -}}
{{- if gt (len $full) 63 -}}
{{- printf "%s-%s" (trunc 54 $full | trimSuffix "-") (sha256sum .sink.name | trunc 8) -}}
{{- else -}}
{{- $full -}}
{{- end -}}
{{- end -}}

{{/*
sluice.writer: a sink's writer settings, as YAML: `writer` with the sink's
own `writer` laid over it. A key the sink sets replaces the default's; a
map one level down merges key by key. (Sprig's merge would let a default
`true` win over a sink's `false`.) Args: root, sink.
*/}}
{{- define "sluice.writer" -}}
{{- $w := deepCopy .root.Values.writer -}}
{{- range $k, $v := (.sink.writer | default dict) -}}
{{- $d := get $w $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $d) -}}
{{- range $sk, $sv := $v -}}
{{- $_ := set $d $sk $sv -}}
{{- end -}}
{{- else -}}
{{- $_ := set $w $k $v -}}
{{- end -}}
{{- end -}}
{{- toYaml $w -}}
{{- end -}}

{{/* sluice.writerCount: the writers a sink should have. Arg: writer settings. */}}
{{- define "sluice.writerCount" -}}
{{- if .autoscaling.enabled -}}
{{- .autoscaling.minReplicas | int -}}
{{- else -}}
{{- .replicas | int -}}
{{- end -}}
{{- end -}}

{{/*
sluice.config: the Sluice configuration file. It also checks what the
chart relies on, so that a missing value fails the install, not the pods.
*/}}
{{- define "sluice.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := required "config.postgres.url is required" (($cfg.postgres | default dict).url) -}}
{{- $_ := required "config.nats.url is required" (($cfg.nats | default dict).url) -}}
{{- if not $cfg.sinks -}}
{{- fail "config.sinks must list at least one sink" -}}
{{- end -}}
{{- $sinks := list -}}
{{- $ids := dict -}}
{{- range $i, $s := .Values.config.sinks -}}
{{- $name := required (printf "config.sinks[%d].name is required" $i) $s.name -}}
{{- if hasKey $s "writers" -}}
{{- fail (printf "config.sinks[%d] (%s): leave out writers; the chart sets it from writer.replicas or writer.autoscaling.minReplicas" $i $name) -}}
{{- end -}}
{{- $id := include "sluice.sinkID" (dict "root" $ "sink" $s) -}}
{{- if not $id -}}
{{- fail (printf "config.sinks[%d].name %q has no letter or digit" $i $name) -}}
{{- end -}}
{{- if hasKey $ids $id -}}
{{- fail (printf "sinks %s and %s would share the Kubernetes name %s; rename one" (get $ids $id) $name $id) -}}
{{- end -}}
{{- $_ := set $ids $id $name -}}
{{- $w := include "sluice.writer" (dict "root" $ "sink" $s) | fromYaml -}}
{{- $entry := omit $s "writer" -}}
{{- $_ := set $entry "writers" (include "sluice.writerCount" $w | int) -}}
{{- $sinks = append $sinks $entry -}}
{{- end -}}
{{- $_ := set $cfg "sinks" $sinks -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* sluice.env: a container's env: secretEnv then env. Arg: component settings. */}}
{{- define "sluice.env" -}}
{{- range $name, $ref := .secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secretEnv.%s.secretName is required" $name) $ref.secretName }}
      key: {{ required (printf "secretEnv.%s.key is required" $name) $ref.key }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- with .env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
sluice.container: the parts of a container that capture and writers share.
Args: root, settings (component values), args (the command's arguments).
*/}}
{{- define "sluice.container" -}}
{{- $root := .root -}}
args:
  - --config
  - /etc/sluice/sluice.yaml
  - --http
  - {{ printf ":%d" (int $root.Values.httpPort) | quote }}
  {{- range .args }}
  - {{ . | quote }}
  {{- end }}
{{- $env := include "sluice.env" .settings | trim }}
{{- if $env }}
env:
  {{- $env | nindent 2 }}
{{- end }}
ports:
  - name: http
    containerPort: {{ $root.Values.httpPort }}
    protocol: TCP
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  {{- toYaml $root.Values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  {{- toYaml $root.Values.readinessProbe | nindent 2 }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
{{- with .settings.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  - name: config
    mountPath: /etc/sluice
    readOnly: true
  {{- with .settings.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/*
sluice.podSpec: the pod fields that capture and writers share, after the
containers. Args: root, settings.
*/}}
{{- define "sluice.podSpec" -}}
{{- $root := .root -}}
{{- $s := .settings -}}
automountServiceAccountToken: false
{{- with $root.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ $s.terminationGracePeriodSeconds | int }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $s.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: config
    configMap:
      name: {{ include "sluice.fullname" $root }}-config
  {{- with $s.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
