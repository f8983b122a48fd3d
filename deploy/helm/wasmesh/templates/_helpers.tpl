{{/* The release's name for its objects (at most 63 characters). */}}
{{- define "wasmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wasmesh.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component ("coordinator" or "node"). */}}
{{- define "wasmesh.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "wasmesh.secretName" -}}
{{- default (printf "%s-keys" (include "wasmesh.fullname" .)) .Values.keys.existingSecret -}}
{{- end -}}

{{- define "wasmesh.coordinatorUrl" -}}
{{- $name := printf "%s-coordinator" (include "wasmesh.fullname" .) -}}
{{- $port := int .Values.coordinator.port -}}
{{- if gt (int .Values.coordinator.replicas) 1 -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.coordinator.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s-pods:%d" $name $i $name $port) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- printf "http://%s:%d" $name $port -}}
{{- end -}}
{{- end -}}

{{/* Whether several coordinators share the journal (and fail when they cannot). */}}
{{- define "wasmesh.shared" -}}
{{- if gt (int .Values.coordinator.replicas) 1 -}}
{{- if not .Values.journal.existingSecret -}}
{{- fail "coordinator.replicas above 1 needs journal.existingSecret: several coordinators share a journal in PostgreSQL" -}}
{{- end -}}
{{- if not .Values.sharedBlobs.existingClaim -}}
{{- fail "coordinator.replicas above 1 needs sharedBlobs.existingClaim: several coordinators share one blob store" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The pod security every wasmesh container runs with. */}}
{{- define "wasmesh.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "wasmesh.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}
