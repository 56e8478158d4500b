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
{{- $nats := include "sluice.nats" . | fromYaml -}}
{{- $cn := $cfg.nats -}}
{{- if $nats.auth -}}
{{- range $f := list "username" "password" "token" "nkey_file" "creds_file" -}}
{{- if hasKey $cn $f -}}
{{- fail (printf "config.nats.%s: the NATS credentials come from nats.auth; leave config.nats.username, password, token, nkey_file and creds_file out" $f) -}}
{{- end -}}
{{- end -}}
{{- range $s := splitList "," $cn.url -}}
{{- /* No URL parser here: its errors would quote a password. */ -}}
{{- if regexMatch "^\\s*([A-Za-z][A-Za-z0-9+.-]*://)?[^/]*@" $s -}}
{{- fail "config.nats.url holds a user, password or token: the NATS credentials come from nats.auth; give the servers' URLs without them" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $nats.tls -}}
{{- range $f := list "tls" "tls_ca_file" "tls_cert_file" "tls_key_file" -}}
{{- if hasKey $cn $f -}}
{{- fail (printf "config.nats.%s: nats.tls.enabled sets the NATS TLS settings; leave config.nats.tls, tls_ca_file, tls_cert_file and tls_key_file out" $f) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := $nats.fields -}}
{{- $_ := set $cn $k $v -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
sluice.secretKey: checks a {secretName, key} value at `at`. Args: at, ref.
*/}}
{{- define "sluice.secretKey" -}}
{{- if not (kindIs "map" .ref) -}}
{{- fail (printf "%s must be {secretName, key}: the key of an existing Secret" .at) -}}
{{- end -}}
{{- $_ := required (printf "%s.secretName is required" .at) .ref.secretName -}}
{{- $_ := required (printf "%s.key is required" .at) .ref.key -}}
{{- end -}}

{{/*
sluice.nats: what nats.auth and nats.tls give every service, as YAML:
fields (of config.nats), env (name, secretName, key: env vars from
Secrets, referred to as ${name} in fields), files (secretName, key, path:
files of the volume mounted at dir, named in fields), and whether auth and
tls are set. Passwords and tokens go through env vars, never into the
ConfigMap; seeds, credentials and keys are files.
*/}}
{{- define "sluice.nats" -}}
{{- $auth := .Values.nats.auth | default dict -}}
{{- $tls := .Values.nats.tls | default dict -}}
{{- $dir := "/etc/sluice-nats" -}}
{{- $fields := dict -}}
{{- $env := list -}}
{{- $files := list -}}
{{- $methods := list -}}
{{- if or $auth.username $auth.password -}}
{{- $methods = append $methods "username and password" -}}
{{- if not $auth.password -}}
{{- fail "nats.auth.username needs nats.auth.password" -}}
{{- end -}}
{{- if not $auth.username -}}
{{- fail "nats.auth.password needs nats.auth.username" -}}
{{- end -}}
{{- if kindIs "string" $auth.username -}}
{{- /* As it is: "$${" keeps a "${" in it from being expanded. */ -}}
{{- $_ := set $fields "username" (replace "${" "$${" $auth.username) -}}
{{- else -}}
{{- include "sluice.secretKey" (dict "at" "nats.auth.username" "ref" $auth.username) -}}
{{- $env = append $env (dict "name" "SLUICE_NATS_USERNAME" "secretName" $auth.username.secretName "key" $auth.username.key) -}}
{{- $_ := set $fields "username" "${SLUICE_NATS_USERNAME}" -}}
{{- end -}}
{{- include "sluice.secretKey" (dict "at" "nats.auth.password" "ref" $auth.password) -}}
{{- $env = append $env (dict "name" "SLUICE_NATS_PASSWORD" "secretName" $auth.password.secretName "key" $auth.password.key) -}}
{{- $_ := set $fields "password" "${SLUICE_NATS_PASSWORD}" -}}
{{- end -}}
{{- with $auth.token -}}
{{- $methods = append $methods "token" -}}
{{- include "sluice.secretKey" (dict "at" "nats.auth.token" "ref" .) -}}
{{- $env = append $env (dict "name" "SLUICE_NATS_TOKEN" "secretName" .secretName "key" .key) -}}
{{- $_ := set $fields "token" "${SLUICE_NATS_TOKEN}" -}}
{{- end -}}
{{- with $auth.nkey -}}
{{- $methods = append $methods "nkey" -}}
{{- include "sluice.secretKey" (dict "at" "nats.auth.nkey" "ref" .) -}}
{{- $files = append $files (dict "secretName" .secretName "key" .key "path" "nats.nk") -}}
{{- $_ := set $fields "nkey_file" (printf "%s/nats.nk" $dir) -}}
{{- end -}}
{{- with $auth.creds -}}
{{- $methods = append $methods "creds" -}}
{{- include "sluice.secretKey" (dict "at" "nats.auth.creds" "ref" .) -}}
{{- $files = append $files (dict "secretName" .secretName "key" .key "path" "nats.creds") -}}
{{- $_ := set $fields "creds_file" (printf "%s/nats.creds" $dir) -}}
{{- end -}}
{{- if gt (len $methods) 1 -}}
{{- fail (printf "nats.auth gives %s: give one way to authenticate" (join ", " $methods)) -}}
{{- end -}}
{{- if $tls.enabled -}}
{{- $_ := set $fields "tls" true -}}
{{- $caSecret := $tls.caSecretName | default $tls.secretName -}}
{{- if and $caSecret $tls.ca -}}
{{- $files = append $files (dict "secretName" $caSecret "key" $tls.ca "path" "ca.crt") -}}
{{- $_ := set $fields "tls_ca_file" (printf "%s/ca.crt" $dir) -}}
{{- end -}}
{{- if $tls.secretName -}}
{{- if and $tls.cert $tls.key -}}
{{- $files = append $files (dict "secretName" $tls.secretName "key" $tls.cert "path" "tls.crt") -}}
{{- $files = append $files (dict "secretName" $tls.secretName "key" $tls.key "path" "tls.key") -}}
{{- $_ := set $fields "tls_cert_file" (printf "%s/tls.crt" $dir) -}}
{{- $_ := set $fields "tls_key_file" (printf "%s/tls.key" $dir) -}}
{{- else if or $tls.cert $tls.key -}}
{{- fail "nats.tls.cert and nats.tls.key: give both (the client certificate and its key) or neither" -}}
{{- end -}}
{{- end -}}
{{- else if or $tls.secretName $tls.caSecretName -}}
{{- fail "nats.tls.secretName and caSecretName need nats.tls.enabled: true" -}}
{{- end -}}
{{- toYaml (dict "dir" $dir "fields" $fields "env" $env "files" $files "auth" (gt (len $methods) 0) "tls" (not (not $tls.enabled))) -}}
{{- end -}}

{{/*
sluice.env: a container's env: the NATS credentials of nats.auth, then
secretEnv, then env. Args: root, settings (component values).
*/}}
{{- define "sluice.env" -}}
{{- $s := .settings -}}
{{- $nats := include "sluice.nats" .root | fromYaml -}}
{{- range $nats.env }}
{{- $name := .name }}
{{- if hasKey ($s.secretEnv | default dict) $name }}
{{- fail (printf "secretEnv.%s: the chart sets %s from nats.auth; leave it out" $name $name) }}
{{- end }}
{{- range $s.env }}
{{- if eq (.name | default "") $name }}
{{- fail (printf "env %s: the chart sets %s from nats.auth; leave it out" $name $name) }}
{{- end }}
{{- end }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}
{{- range $name, $ref := $s.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secretEnv.%s.secretName is required" $name) $ref.secretName }}
      key: {{ required (printf "secretEnv.%s.key is required" $name) $ref.key }}
      {{- if hasKey $ref "optional" }}
      optional: {{ $ref.optional }}
      {{- end }}
{{- end }}
{{- with $s.env }}
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
{{- $env := include "sluice.env" . | trim }}
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
  {{- $nats := include "sluice.nats" $root | fromYaml }}
  {{- if $nats.files }}
  - name: sluice-nats
    mountPath: {{ $nats.dir }}
    readOnly: true
  {{- end }}
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
  {{- $nats := include "sluice.nats" $root | fromYaml }}
  {{- with $nats.files }}
  {{- /* One Secret, one source; files readable by the owner only (and,
  through fsGroup, by the services' group). */}}
  {{- $bySecret := dict }}
  {{- range . }}
  {{- $_ := set $bySecret .secretName (append (get $bySecret .secretName | default list) .) }}
  {{- end }}
  - name: sluice-nats
    projected:
      defaultMode: 256 # 0400
      sources:
        {{- range $secret, $items := $bySecret }}
        - secret:
            name: {{ $secret }}
            items:
              {{- range $items }}
              - key: {{ .key }}
                path: {{ .path }}
              {{- end }}
        {{- end }}
  {{- end }}
  {{- with $s.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
