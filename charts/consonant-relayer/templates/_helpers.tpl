{{/*
Names, labels and images shared by every template.
*/}}

{{- define "consonant-relayer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-consonant-relayer", or the release name when it already holds the chart name. */}}
{{- define "consonant-relayer.fullname" -}}
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

{{/* A component's resource name: "<fullname>-<suffix>", at most 63 characters. */}}
{{- define "consonant-relayer.componentName" -}}
{{- $full := include "consonant-relayer.fullname" .root -}}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix)))) .suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "consonant-relayer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "consonant-relayer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "consonant-relayer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels of every resource. */}}
{{- define "consonant-relayer.labels" -}}
helm.sh/chart: {{ include "consonant-relayer.chart" . }}
{{ include "consonant-relayer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: consonant
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: dict "root" $ "component" "relayer". */}}
{{- define "consonant-relayer.componentLabels" -}}
{{ include "consonant-relayer.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "consonant-relayer.componentSelectorLabels" -}}
{{ include "consonant-relayer.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{/*
An image reference. `registry` (global.imageRegistry, for a mirror) replaces
the repository's registry host, or is put in front of a Docker Hub name.
*/}}
{{- define "consonant-relayer.imageRef" -}}
{{- $repo := .image.repository -}}
{{- with .registry -}}
{{- $parts := splitList "/" $repo -}}
{{- $first := first $parts -}}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $repo = join "/" (prepend (rest $parts) (trimSuffix "/" .)) -}}
{{- else -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString (default .appVersion .image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "consonant-relayer.image" -}}
{{- include "consonant-relayer.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion "registry" .Values.global.imageRegistry) -}}
{{- end -}}

{{- define "consonant-relayer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "consonant-relayer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The credentials Secret (clusterId, clusterToken). */}}
{{- define "consonant-relayer.credentialsSecretName" -}}
{{- default (include "consonant-relayer.componentName" (dict "root" . "suffix" "cluster")) .Values.credentials.secretName -}}
{{- end -}}

{{/* The bootstrap-token Secret: the user's, or "<fullname>-bootstrap" created by the chart. */}}
{{- define "consonant-relayer.bootstrapSecretName" -}}
{{- default (include "consonant-relayer.componentName" (dict "root" . "suffix" "bootstrap")) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "consonant-relayer.bootstrapSecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}token{{- end -}}
{{- end -}}

{{/* The leader Lease the relayer holds: "<credentials secret>-leader" (src/watch/leader.rs). */}}
{{- define "consonant-relayer.leaseName" -}}
{{- printf "%s-leader" (include "consonant-relayer.credentialsSecretName" .) -}}
{{- end -}}

{{- define "consonant-relayer.otelName" -}}
{{- include "consonant-relayer.componentName" (dict "root" . "suffix" "otel") -}}
{{- end -}}

{{/* Paths inside the relayer and hook containers. */}}
{{- define "consonant-relayer.configPath" -}}/etc/consonant/relayer.toml{{- end -}}
{{- define "consonant-relayer.caPath" -}}/etc/consonant/ca/ca.crt{{- end -}}
{{- define "consonant-relayer.clientTlsDir" -}}/var/run/secrets/consonant-client-tls{{- end -}}
{{- define "consonant-relayer.credentialsDir" -}}/var/run/secrets/consonant{{- end -}}
{{- define "consonant-relayer.bootstrapDir" -}}/var/run/secrets/consonant-bootstrap{{- end -}}

{{/*
Namespaces the relayer may act in, as a JSON list: commands.allowedNamespaces,
where ["*"] with rbac.scope namespaced means the release namespace.
*/}}
{{- define "consonant-relayer.commandNamespaces" -}}
{{- $ns := .Values.commands.allowedNamespaces -}}
{{- if and (eq .Values.rbac.scope "namespaced") (has "*" $ns) -}}
{{- $ns = list (include "consonant-relayer.namespace" .) -}}
{{- end -}}
{{- toJson $ns -}}
{{- end -}}

{{/*
The backend's TCP ports as a JSON list: networkPolicy.backend.ports, or those
of backend.url and of every gRPC endpoint (backend.grpcEndpoints, else
backend.grpcEndpoint; the relayer's rules: no endpoint = port 50051; https
443, http 80, grpc/grpcs 50051 when no port is given).
*/}}
{{- define "consonant-relayer.backendPorts" -}}
{{- if .Values.networkPolicy.backend.ports -}}
{{- toJson .Values.networkPolicy.backend.ports -}}
{{- else -}}
{{- $defaults := dict "https" 443 "http" 80 "grpcs" 50051 "grpc" 50051 -}}
{{- $ports := list -}}
{{- $url := urlParse .Values.backend.url -}}
{{- $p := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) -}}
{{- $ports = append $ports (ternary (atoi $p) (get $defaults $url.scheme | default 443) (ne $p "")) -}}
{{- $endpoints := .Values.backend.grpcEndpoints | default (compact (list .Values.backend.grpcEndpoint)) -}}
{{- range $endpoints -}}
{{- $g := urlParse (toString .) -}}
{{- $gp := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $g.host) -}}
{{- $ports = append $ports (ternary (atoi $gp) (get $defaults $g.scheme | default 50051) (ne $gp "")) -}}
{{- end -}}
{{- if not $endpoints -}}
{{- $ports = append $ports 50051 -}}
{{- end -}}
{{- toJson (uniq $ports) -}}
{{- end -}}
{{- end -}}

{{/*
Checks that values.schema.json cannot express clearly (and repeats the TLS
and cluster-lock key rules for --skip-schema-validation: a bad verify key
would stop the relayer at start). Every message names the value and the fix.
*/}}
{{- define "consonant-relayer.validate" -}}
{{- if not .Values.cluster.name -}}
{{- fail "cluster.name is required: set a DNS-1123 label naming this cluster, e.g. --set cluster.name=production-us-east-1" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" (toString .Values.cluster.name)) -}}
{{- fail (printf "cluster.name %q is not a DNS-1123 label: use lowercase letters, digits and '-', start and end with a letter or digit, at most 63 characters" (toString .Values.cluster.name)) -}}
{{- end -}}
{{- if not .Values.backend.url -}}
{{- fail "backend.url is required: set the backend's registration API base, e.g. --set backend.url=https://backend.company.com" -}}
{{- end -}}
{{- if and .Values.backend.tlsVerify (not (hasPrefix "https://" .Values.backend.url)) -}}
{{- fail (printf "backend.url %q is not https://: use an https:// URL, or set backend.tlsVerify=false for a development backend without TLS" .Values.backend.url) -}}
{{- end -}}
{{- if and .Values.backend.tlsVerify (hasPrefix "http://" .Values.backend.grpcEndpoint) -}}
{{- fail (printf "backend.grpcEndpoint %q is plaintext: use grpcs:// or https:// (grpc:// follows backend.url), or set backend.tlsVerify=false for development" .Values.backend.grpcEndpoint) -}}
{{- end -}}
{{- include "consonant-relayer.validateEgress" . -}}
{{- if include "consonant-relayer.registers" . -}}
{{- if and (not .Values.auth.bearerToken) (not .Values.auth.existingSecret) -}}
{{- fail "auth: neither auth.bearerToken nor auth.existingSecret is set: the registration hook needs the bootstrap token. Create a Secret (kubectl create secret generic consonant-bootstrap --from-literal=token=...) and set auth.existingSecret=consonant-bootstrap, or pass --set auth.bearerToken=... (kept in Helm's release record)" -}}
{{- end -}}
{{- if and .Values.auth.bearerToken .Values.auth.existingSecret -}}
{{- fail "auth: both auth.bearerToken and auth.existingSecret are set: give only one (auth.existingSecret is recommended)" -}}
{{- end -}}
{{- end -}}
{{- range $id, $key := .Values.commands.verifyKeys -}}
{{- if not (regexMatch "^[A-Za-z0-9._-]{1,64}$" $id) -}}
{{- fail (printf "commands.verifyKeys: key id %q is not a key id: use 1 to 64 letters, digits, '.', '_' or '-' (e.g. \"ops-2026\")" $id) -}}
{{- end -}}
{{- if not (regexMatch "^ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$" (toString $key)) -}}
{{- fail (printf "commands.verifyKeys.%s is not \"ed25519:<base64 of the 32-byte public key>\": use the public key `consonant-relayer keygen` prints" $id) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.rbac.scope "namespaced") (has "*" .Values.commands.allowedNamespaces) (gt (len .Values.commands.allowedNamespaces) 1) -}}
{{- fail (printf "commands.allowedNamespaces %s mixes \"*\" with names: with rbac.scope=namespaced list the namespaces, or use [\"*\"] alone for the release namespace" (toJson .Values.commands.allowedNamespaces)) -}}
{{- end -}}
{{- end -}}

{{/*
The egress values: the gRPC endpoint list, the proxy. A proxy URL with
credentials is refused without repeating it: it would be stored in a
ConfigMap and in Helm's release record (backend.proxySecret keeps it in a
Secret of your own).
*/}}
{{- define "consonant-relayer.validateEgress" -}}
{{- $b := .Values.backend -}}
{{- if and $b.grpcEndpoint $b.grpcEndpoints -}}
{{- fail (printf "backend.grpcEndpoint %q and backend.grpcEndpoints are both set: set one (backend.grpcEndpoints is the failover list: put %q first in it and leave backend.grpcEndpoint empty)" (toString $b.grpcEndpoint) (toString $b.grpcEndpoint)) -}}
{{- end -}}
{{- range $i, $endpoint := $b.grpcEndpoints -}}
{{- if not (regexMatch "^(grpcs?|https?)://.+$" (toString $endpoint)) -}}
{{- fail (printf "backend.grpcEndpoints[%d] %q is not a gRPC endpoint: use grpcs://host:port or https://host:port (TLS), grpc:// (follows backend.url's scheme) or http:// (plaintext)" $i (toString $endpoint)) -}}
{{- end -}}
{{- if and $b.tlsVerify (hasPrefix "http://" (toString $endpoint)) -}}
{{- fail (printf "backend.grpcEndpoints[%d] %q is plaintext: use grpcs:// or https:// (grpc:// follows backend.url), or set backend.tlsVerify=false for development" $i (toString $endpoint)) -}}
{{- end -}}
{{- end -}}
{{- $proxy := toString $b.proxy -}}
{{- $port := regexFind "[0-9]+$" (trimSuffix "/" $proxy) -}}
{{- /* One chain: `helm lint` logs a fail and goes on, so no later message
may show a value with credentials. */ -}}
{{- if contains "@" $proxy -}}
{{- fail "backend.proxy holds credentials (user:password@): they would be stored in a ConfigMap and in Helm's release record, so the value is refused (and not repeated here). Put the full proxy URL in a Secret of your own (kubectl create secret generic corp-proxy --from-literal=proxyUrl='http://user:password@proxy.corp:3128'), set backend.proxySecret=corp-proxy (key: backend.proxySecretKey, default proxyUrl) and leave backend.proxy empty" -}}
{{- else if not (regexMatch `^$|^none$|^http://(\[[0-9A-Fa-f:.]+\]|[^\s:/?#@\[\]]+):[0-9]{1,5}/?$` $proxy) -}}
{{- fail (printf "backend.proxy %q is not \"\" (the pod's environment), \"none\" (direct) or an http://host:port proxy URL: the port is required, and https:// and SOCKS proxies are not supported (the tunnel to the backend is TLS end to end)" $proxy) -}}
{{- else if and $port (or (lt (atoi $port) 1) (gt (atoi $port) 65535)) -}}
{{- fail (printf "backend.proxy %q has port %s: use a port from 1 to 65535" $proxy $port) -}}
{{- else if and $b.proxySecret $proxy -}}
{{- fail (printf "backend.proxy (%q) and backend.proxySecret are both set: set one (the URL in the Secret would override backend.proxy)" $proxy) -}}
{{- end -}}
{{- if and $b.proxySecret .Values.networkPolicy.enabled (not .Values.networkPolicy.proxy.port) -}}
{{- fail "backend.proxySecret is set but networkPolicy.proxy.port is not: the chart cannot read the Secret, so give the proxy's port for the NetworkPolicy egress rule (e.g. --set networkPolicy.proxy.port=3128), with networkPolicy.proxy.cidrs for its addresses" -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart knows the relayer reaches the backend through an
HTTP proxy: backend.proxy is a URL, or backend.proxySecret is set. */}}
{{- define "consonant-relayer.proxyOn" -}}
{{- if or .Values.backend.proxySecret (hasPrefix "http://" (toString .Values.backend.proxy)) -}}
true
{{- end -}}
{{- end -}}

{{/* The proxy's port: networkPolicy.proxy.port, else that of backend.proxy. */}}
{{- define "consonant-relayer.proxyPort" -}}
{{- if .Values.networkPolicy.proxy.port -}}
{{- int .Values.networkPolicy.proxy.port -}}
{{- else -}}
{{- regexFind "[0-9]+$" (trimSuffix "/" (toString .Values.backend.proxy)) -}}
{{- end -}}
{{- end -}}

{{/* The proxy as NOTES may show it: backend.proxy (never with credentials:
those are refused; redacted all the same), or the Secret's name. */}}
{{- define "consonant-relayer.proxyShown" -}}
{{- if .Values.backend.proxySecret -}}
{{- printf "in Secret %s/%s (key %s)" (include "consonant-relayer.namespace" .) .Values.backend.proxySecret .Values.backend.proxySecretKey -}}
{{- else -}}
{{- regexReplaceAll "//[^/]*@" (toString .Values.backend.proxy) "//***@" -}}
{{- end -}}
{{- end -}}

{{/*
NO_PROXY of the relayer and the hook: backend.noProxy, the release's own
Services (the relayer's, and the collector's when deployed), the API
server's addresses when known, then backend.extraNoProxy; comma-separated,
each once.
*/}}
{{- define "consonant-relayer.noProxy" -}}
{{- $entries := concat (.Values.backend.noProxy | default list) (list (include "consonant-relayer.fullname" .)) -}}
{{- if include "consonant-relayer.collectorOn" . -}}
{{- $entries = append $entries (include "consonant-relayer.otelName" .) -}}
{{- end -}}
{{- $entries = concat $entries (include "consonant-relayer.apiServerCidrs" . | fromJsonArray) (.Values.backend.extraNoProxy | default list) -}}
{{- join "," (uniq $entries) -}}
{{- end -}}

{{/* Egress environment of the relayer and hook containers: NO_PROXY
(both spellings), and the proxy URL from backend.proxySecret as the
override of the config's backend.proxy. */}}
{{- define "consonant-relayer.egressEnv" -}}
{{- $noProxy := include "consonant-relayer.noProxy" . -}}
- name: NO_PROXY
  value: {{ $noProxy | quote }}
- name: no_proxy
  value: {{ $noProxy | quote }}
{{- if .Values.backend.proxySecret }}
- name: CONSONANT_RELAYER__BACKEND__PROXY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.backend.proxySecret | quote }}
      key: {{ .Values.backend.proxySecretKey | quote }}
{{- end }}
{{- end -}}

{{/* TOML string, array and inline-table literals (a JSON string is a TOML basic string). */}}
{{- define "consonant-relayer.tomlTable" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}
{{- $pairs = append $pairs (printf "%s = %s" (toJson (toString $k)) (toJson (toString $v))) -}}
{{- end -}}
{{- printf "{ %s }" (join ", " $pairs) -}}
{{- end -}}

{{/* A duration or size: a string as given, or an integer count of bytes. */}}
{{- define "consonant-relayer.tomlUnit" -}}
{{- if kindIs "string" . -}}{{ toJson . }}{{- else -}}{{ int64 . }}{{- end -}}
{{- end -}}

{{/*
The relayer's configuration file, keys exactly as the config contract
(config.md). Rendered into the relayer ConfigMap and the hook ConfigMap.
*/}}
{{- define "consonant-relayer.relayerToml" -}}
{{- $v := .Values -}}
# Rendered by the consonant-relayer chart; validate with
# consonant-relayer check-config --config relayer.toml
[cluster]
name = {{ $v.cluster.name | toString | toJson }}
region = {{ $v.cluster.region | toString | toJson }}
environment = {{ $v.cluster.environment | toString | toJson }}
labels = {{ include "consonant-relayer.tomlTable" $v.cluster.labels }}

[backend]
url = {{ $v.backend.url | toJson }}
grpc_endpoint = {{ $v.backend.grpcEndpoint | toString | toJson }}
grpc_endpoints = {{ $v.backend.grpcEndpoints | default list | toJson }}
proxy = {{ $v.backend.proxy | toString | toJson }}
tls_verify = {{ $v.backend.tlsVerify }}
ca_file = {{ ternary (include "consonant-relayer.caPath" .) "" (ne $v.backend.caBundle "") | toJson }}
client_cert_file = {{ ternary (printf "%s/tls.crt" (include "consonant-relayer.clientTlsDir" .)) "" (ne $v.backend.clientCertSecret "") | toJson }}
client_key_file = {{ ternary (printf "%s/tls.key" (include "consonant-relayer.clientTlsDir" .)) "" (ne $v.backend.clientCertSecret "") | toJson }}

[credentials]
cluster_id_file = {{ printf "%s/clusterId" (include "consonant-relayer.credentialsDir" .) | toJson }}
cluster_token_file = {{ printf "%s/clusterToken" (include "consonant-relayer.credentialsDir" .) | toJson }}
secret_name = {{ include "consonant-relayer.credentialsSecretName" . | toJson }}
secret_namespace = {{ (include "consonant-relayer.namespace" .) | toJson }}

[connection]
connect_timeout = {{ include "consonant-relayer.tomlUnit" $v.connection.connectTimeout }}
heartbeat_interval = {{ include "consonant-relayer.tomlUnit" $v.connection.heartbeatInterval }}
backoff_base = {{ include "consonant-relayer.tomlUnit" $v.connection.backoffBase }}
backoff_max = {{ include "consonant-relayer.tomlUnit" $v.connection.backoffMax }}
breaker_failure_threshold = {{ $v.connection.breakerFailureThreshold | int64 }}
breaker_open_duration = {{ include "consonant-relayer.tomlUnit" $v.connection.breakerOpenDuration }}
replay_buffer_bytes = {{ include "consonant-relayer.tomlUnit" $v.connection.replayBufferBytes }}
max_frame_bytes = {{ include "consonant-relayer.tomlUnit" $v.connection.maxFrameBytes }}
http2_keepalive_interval = {{ include "consonant-relayer.tomlUnit" $v.connection.http2KeepaliveInterval }}

[commands]
max_in_flight = {{ $v.commands.maxInFlight | int64 }}
rate_per_second = {{ $v.commands.ratePerSecond | int64 }}
burst = {{ $v.commands.burst | int64 }}
default_timeout = {{ include "consonant-relayer.tomlUnit" $v.commands.defaultTimeout }}
dedup_retention = {{ include "consonant-relayer.tomlUnit" $v.commands.dedupRetention }}
dedup_max_entries = {{ $v.commands.dedupMaxEntries | int64 }}
dedup_max_bytes = {{ include "consonant-relayer.tomlUnit" $v.commands.dedupMaxBytes }}
allowed_namespaces = {{ include "consonant-relayer.commandNamespaces" . }}
denied_kinds = {{ $v.commands.deniedKinds | toJson }}
allowed_actions = {{ $v.commands.allowedActions | toJson }}
verify_keys = {{ include "consonant-relayer.tomlTable" $v.commands.verifyKeys }}
signed_actions = {{ $v.commands.signedActions | toJson }}

[telemetry]
enabled = {{ $v.telemetry.enabled }}
otlp_grpc_listen = "0.0.0.0:4317"
otlp_http_listen = "0.0.0.0:4318"
buffer_bytes = {{ include "consonant-relayer.tomlUnit" $v.telemetry.bufferBytes }}
max_batch_bytes = {{ include "consonant-relayer.tomlUnit" $v.telemetry.maxBatchBytes }}
flush_interval = {{ include "consonant-relayer.tomlUnit" $v.telemetry.flushInterval }}
max_request_bytes = {{ include "consonant-relayer.tomlUnit" $v.telemetry.maxRequestBytes }}

[kubernetes]
enabled = {{ $v.kubernetes.enabled }}
kubeconfig = ""
leader_election = {{ $v.kubernetes.leaderElection }}
watch_label_selector = {{ $v.kubernetes.watchLabelSelector | toJson }}
lease_duration = {{ include "consonant-relayer.tomlUnit" $v.kubernetes.leaseDuration }}

[health]
listen = "0.0.0.0:8080"
debug_actors = {{ $v.relayer.debugActors }}

[logging]
level = {{ $v.relayer.logging.level | toJson }}
format = {{ $v.relayer.logging.format | toJson }}

[tracing]
otlp_endpoint = {{ $v.tracing.otlpEndpoint | toJson }}
otlp_protocol = {{ $v.tracing.otlpProtocol | toJson }}
sample_ratio = {{ printf "%f" (float64 $v.tracing.sampleRatio) }}
{{ end -}}

{{/* Pod-level scheduling fields shared by the relayer pods. */}}
{{- define "consonant-relayer.defaultAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        labelSelector:
          matchLabels:
            {{- include "consonant-relayer.componentSelectorLabels" (dict "root" . "component" "relayer") | nindent 12 }}
        topologyKey: kubernetes.io/hostname
{{- end -}}

{{/* RBAC rules for commands: dict "verbs" (on "resources") "actions". */}}
{{- define "consonant-relayer.workloadRules" -}}
{{- $verbs := .verbs }}
{{- $actions := .actions }}
{{- if $verbs }}
{{- range .resources }}
- apiGroups: {{ toJson .apiGroups }}
  resources: {{ toJson .resources }}
  verbs: {{ toJson $verbs }}
{{- end }}
{{- end }}
{{- if has "scale" $actions }}
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale", "replicasets/scale"]
  verbs: ["get", "patch", "update"]
{{- end }}
{{- if has "restart" $actions }}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
{{- if has "logs" $actions }}
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
{{- end }}
{{- /* Pods are read, never written, unless rbac.podsAndServiceAccounts. */}}
{{- $podReads := list }}
{{- if has "get" $actions }}{{ $podReads = append $podReads "get" }}{{ end }}
{{- if has "list" $actions }}{{ $podReads = concat $podReads (list "list" "watch") }}{{ end }}
{{- if and $podReads (not .podsAndServiceAccounts) }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: {{ toJson $podReads }}
{{- end }}
{{- end }}

{{/* Annotations of a registration hook resource with the given weight. */}}
{{- define "consonant-relayer.hookAnnotations" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}

{{- define "consonant-relayer.registerName" -}}
{{- include "consonant-relayer.componentName" (dict "root" . "suffix" "register") -}}
{{- end -}}

{{/* Labels the register command puts on the credentials Secret (stable
across upgrades). Not app.kubernetes.io/instance: Argo CD's label tracking
would count the Secret as part of the app but missing from its manifests,
show it OutOfSync and prune it — and the bootstrap token is single-use. */}}
{{- define "consonant-relayer.credentialsLabels" -}}
{{- $labels := dict "app.kubernetes.io/name" (include "consonant-relayer.name" .) "consonant.xyz/release" .Release.Name "app.kubernetes.io/part-of" "consonant" "app.kubernetes.io/component" "credentials" -}}
{{- toJson $labels -}}
{{- end -}}

{{/* NetworkPolicy ports: dict "ports" (numbers) "protocols" (names). */}}
{{- define "consonant-relayer.npPorts" -}}
{{- $out := list -}}
{{- range $port := .ports -}}
{{- range $protocol := $.protocols -}}
{{- $out = append $out (dict "protocol" $protocol "port" (int $port)) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* NetworkPolicy egress rules: DNS and the Kubernetes API server. */}}
{{- define "consonant-relayer.egressDnsApi" -}}
{{- $np := .Values.networkPolicy -}}
{{- $dns := dict "to" $np.dns.to "ports" (include "consonant-relayer.npPorts" (dict "ports" $np.dns.ports "protocols" (list "UDP" "TCP")) | fromJsonArray) -}}
{{- $api := dict "ports" (include "consonant-relayer.npPorts" (dict "ports" $np.kubernetesApi.ports "protocols" (list "TCP")) | fromJsonArray) -}}
{{- $cidrs := include "consonant-relayer.apiServerCidrs" . | fromJsonArray -}}
{{- with $cidrs -}}
{{- $to := list -}}
{{- range . }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end -}}
{{- $_ := set $api "to" $to -}}
{{- end -}}
{{- toYaml (list $dns $api) -}}
{{- end -}}

{{/*
NetworkPolicy egress rule on the way to the backend. Through a proxy: the
proxy's port, at networkPolicy.proxy.cidrs or, when empty, any address
(NOTES warns), and not the backend's ports. Direct: the backend on its
ports, public addresses only unless private.
*/}}
{{- define "consonant-relayer.egressBackend" -}}
{{- if include "consonant-relayer.proxyOn" . -}}
{{- $rule := dict "ports" (include "consonant-relayer.npPorts" (dict "ports" (list (include "consonant-relayer.proxyPort" . | int)) "protocols" (list "TCP")) | fromJsonArray) -}}
{{- with .Values.networkPolicy.proxy.cidrs -}}
{{- $to := list -}}
{{- range . }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end -}}
{{- $_ := set $rule "to" $to -}}
{{- end -}}
{{- toYaml (list $rule) -}}
{{- else -}}
{{- $b := .Values.networkPolicy.backend -}}
{{- $rule := dict "ports" (include "consonant-relayer.npPorts" (dict "ports" (include "consonant-relayer.backendPorts" . | fromJsonArray) "protocols" (list "TCP")) | fromJsonArray) -}}
{{- if $b.cidrs -}}
{{- $to := list -}}
{{- range $b.cidrs }}{{ $to = append $to (dict "ipBlock" (dict "cidr" .)) }}{{ end -}}
{{- $_ := set $rule "to" $to -}}
{{- else if not $b.private -}}
{{- $_ := set $rule "to" (list (dict "ipBlock" (dict "cidr" "0.0.0.0/0" "except" $b.privateCidrs))) -}}
{{- end -}}
{{- toYaml (list $rule) -}}
{{- end -}}
{{- end -}}

{{/* The collector's pod template, for the DaemonSet and the Deployment. */}}
{{- define "consonant-relayer.otelPodTemplate" -}}
{{- $o := .Values.otelCollector -}}
{{- $daemonset := eq $o.type "daemonset" -}}
metadata:
  labels:
    {{- include "consonant-relayer.componentLabels" (dict "root" . "component" "otel-collector") | nindent 4 }}
  annotations:
    checksum/config: {{ include (print .Template.BasePath "/otel-collector-configmap.yaml") . | sha256sum }}
    {{- with $o.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "consonant-relayer.otelName" . }}
  automountServiceAccountToken: true
  enableServiceLinks: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $o.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $o.podSecurityContext | nindent 4 }}
  {{- with $o.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $o.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $o.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: otel-collector
      image: {{ include "consonant-relayer.imageRef" (dict "image" $o.image "appVersion" "latest" "registry" .Values.global.imageRegistry) }}
      imagePullPolicy: {{ $o.image.pullPolicy }}
      args: ["--config=/conf/config.yaml"]
      env:
        - name: MY_POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: K8S_NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: GOMEMLIMIT
          value: {{ printf "%sMiB" (include "consonant-relayer.collectorLimitMiB" .) | quote }}
      ports:
        - name: otlp-grpc
          containerPort: 4317
          protocol: TCP
          {{- if and $daemonset $o.hostPort }}
          hostPort: 4317
          {{- end }}
        - name: otlp-http
          containerPort: 4318
          protocol: TCP
          {{- if and $daemonset $o.hostPort }}
          hostPort: 4318
          {{- end }}
        - name: health
          containerPort: 13133
          protocol: TCP
      livenessProbe:
        httpGet:
          path: /
          port: health
        periodSeconds: 10
      readinessProbe:
        httpGet:
          path: /
          port: health
        periodSeconds: 5
      resources:
        {{- toYaml $o.resources | nindent 8 }}
      securityContext:
        {{- toYaml $o.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /conf
          readOnly: true
  volumes:
    - name: config
      configMap:
        name: {{ include "consonant-relayer.otelName" . }}
        items:
          - key: config.yaml
            path: config.yaml
{{- end -}}

{{/*
A memory quantity ("512Mi", "1Gi", "1.5G", "268435456") in whole MiB.
*/}}
{{- define "consonant-relayer.quantityMiB" -}}
{{- $q := toString . -}}
{{- if hasSuffix "Ti" $q -}}{{ mulf (float64 (trimSuffix "Ti" $q)) 1048576 | int }}
{{- else if hasSuffix "Gi" $q -}}{{ mulf (float64 (trimSuffix "Gi" $q)) 1024 | int }}
{{- else if hasSuffix "Mi" $q -}}{{ float64 (trimSuffix "Mi" $q) | int }}
{{- else if hasSuffix "Ki" $q -}}{{ divf (float64 (trimSuffix "Ki" $q)) 1024 | int }}
{{- else if hasSuffix "T" $q -}}{{ divf (mulf (float64 (trimSuffix "T" $q)) 1000000000000) 1048576 | int }}
{{- else if hasSuffix "G" $q -}}{{ divf (mulf (float64 (trimSuffix "G" $q)) 1000000000) 1048576 | int }}
{{- else if hasSuffix "M" $q -}}{{ divf (mulf (float64 (trimSuffix "M" $q)) 1000000) 1048576 | int }}
{{- else if hasSuffix "k" $q -}}{{ divf (mulf (float64 (trimSuffix "k" $q)) 1000) 1048576 | int }}
{{- else -}}{{ divf (float64 $q) 1048576 | int }}
{{- end -}}
{{- end -}}

{{/*
The collector's memory_limiter limit in MiB: otelCollector.memoryLimitMiB
when set, else 80% of the container's memory limit (so the limiter acts
before the kernel's OOM killer does), else 400. A set value at or above the
container limit is refused.
*/}}
{{- define "consonant-relayer.collectorLimitMiB" -}}
{{- $o := .Values.otelCollector -}}
{{- $container := 0 -}}
{{- with (($o.resources).limits).memory }}{{ $container = include "consonant-relayer.quantityMiB" . | int }}{{ end -}}
{{- if $o.memoryLimitMiB -}}
{{- if and $container (ge (int $o.memoryLimitMiB) $container) -}}
{{- fail (printf "otelCollector.memoryLimitMiB (%d) is not below the collector's memory limit (otelCollector.resources.limits.memory %s = %d MiB): the kernel would kill it before memory_limiter acts; lower it, or leave it 0 to use 80%% of the limit" (int $o.memoryLimitMiB) (toString $o.resources.limits.memory) $container) -}}
{{- end -}}
{{- int $o.memoryLimitMiB -}}
{{- else if $container -}}
{{- div (mul $container 80) 100 -}}
{{- else -}}
400
{{- end -}}
{{- end -}}

{{/*
memory_limiter's spike limit: otelCollector.memorySpikeLimitMiB when set,
else a quarter of the limit.
*/}}
{{- define "consonant-relayer.collectorSpikeMiB" -}}
{{- if .Values.otelCollector.memorySpikeLimitMiB -}}
{{- int .Values.otelCollector.memorySpikeLimitMiB -}}
{{- else -}}
{{- div (include "consonant-relayer.collectorLimitMiB" . | int) 4 -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the collector is deployed: enabled, and it has somewhere to
send — the relayer (telemetry.enabled) or a pipeline of
otelCollector.extraPipelines. A collector exporting to nothing is not
rendered (NOTES says so).
*/}}
{{- define "consonant-relayer.collectorOn" -}}
{{- if and .Values.otelCollector.enabled (or .Values.telemetry.enabled .Values.otelCollector.extraPipelines) -}}
true
{{- end -}}
{{- end -}}

{{/*
"true" on an upgrade whose credentials Secret already holds clusterId and
clusterToken (looked up in the cluster; `helm template` sees none): the
registration hook is then not rendered and no bootstrap token is needed, so
the one-time token is not asked for — nor kept — in later revisions.
*/}}
{{- define "consonant-relayer.alreadyRegistered" -}}
{{- if .Release.IsUpgrade -}}
{{- $secret := lookup "v1" "Secret" (include "consonant-relayer.namespace" .) (include "consonant-relayer.credentialsSecretName" .) -}}
{{- if and $secret (($secret.data).clusterId) (($secret.data).clusterToken) -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "true" when this install or upgrade runs the registration hook. */}}
{{- define "consonant-relayer.registers" -}}
{{- if and .Values.registration.enabled (not (include "consonant-relayer.alreadyRegistered" .)) -}}
true
{{- end -}}
{{- end -}}

{{/*
Where the API server is, for NetworkPolicy egress: networkPolicy.kubernetesApi.cidrs
when set; else the addresses of the `kubernetes` EndpointSlice in `default`,
looked up at install/upgrade time (one /32 or /128 each); else nothing, and
the rule allows any address on the API ports (NOTES warns). `helm template`
(and so Argo CD) cannot look up: set the CIDRs there.
*/}}
{{- define "consonant-relayer.apiServerCidrs" -}}
{{- $cidrs := .Values.networkPolicy.kubernetesApi.cidrs -}}
{{- if not $cidrs -}}
{{- $slice := lookup "discovery.k8s.io/v1" "EndpointSlice" "default" "kubernetes" -}}
{{- range ($slice.endpoints | default list) -}}
{{- range .addresses -}}
{{- $cidrs = append $cidrs (printf "%s/%s" . (ternary "128" "32" (contains ":" .))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson ($cidrs | default list) -}}
{{- end -}}

{{/* The namespace everything goes in: namespaceOverride, else the release's. */}}
{{- define "consonant-relayer.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}
