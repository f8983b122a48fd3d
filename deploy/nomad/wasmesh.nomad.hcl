# wasmesh on Nomad: one coordinator and a group of nodes, in the image of
# deploy/docker/Dockerfile. The keys are Nomad variables, written once:
#
#   nomad var put nomad/jobs/wasmesh api_key=$(openssl rand -hex 16) \
#     admin_key=$(openssl rand -hex 16) node_key=$(openssl rand -hex 16)
#   nomad job run deploy/nomad/wasmesh.nomad.hcl
#
# The coordinator's journal lives on a host volume named "wasmesh-coordinator" (client
# config: host_volume "wasmesh-coordinator" { path = "/srv/wasmesh" }). The autoscaler's
# nomad provisioner scales the "node" group of this job.

variable "image" {
  type    = string
  default = "wasmesh:0.1.0"
}

variable "nodes" {
  type    = number
  default = 2
}

job "wasmesh" {
  datacenters = ["dc1"]
  type        = "service"

  group "coordinator" {
    count = 1

    network {
      port "http" {
        static = 9100
      }
    }

    volume "data" {
      type      = "host"
      source    = "wasmesh-coordinator"
      read_only = false
    }

    service {
      name     = "wasmesh-coordinator"
      port     = "http"
      provider = "nomad"

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "ready"
        type     = "http"
        path     = "/compute/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "coordinator" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http"]
        args  = ["coordinator", "--listen", "0.0.0.0:9100", "--data-dir", "/var/lib/wasmesh"]
      }

      volume_mount {
        volume      = "data"
        destination = "/var/lib/wasmesh"
      }

      template {
        destination = "secrets/keys.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/wasmesh" }}
          WASMESH_API_KEY={{ .api_key }}
          WASMESH_ADMIN_KEYS={{ .admin_key }}
          WASMESH_NODE_KEY={{ .node_key }}
          {{ end }}
        EOT
      }

      env {
        RUST_LOG = "info"
      }

      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }

  group "node" {
    count = var.nodes

    # The coordinator's autoscaler (`--autoscale nomad --nomad-job wasmesh
    # --nomad-group node`) sets this group's count within these bounds.
    scaling {
      enabled = true
      min     = 0
      max     = 20
    }

    network {
      port "http" {
        to = 9000
      }
    }

    # The node's store and compiled modules survive a restart of its task.
    ephemeral_disk {
      size    = 4096
      sticky  = true
      migrate = true
    }

    service {
      name     = "wasmesh-node"
      port     = "http"
      provider = "nomad"

      check {
        name     = "alive"
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "ready"
        type     = "http"
        path     = "/compute/ready"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "node" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http"]
        args  = ["node", "--listen", "0.0.0.0:9000", "--data-dir", "/alloc/data/wasmesh"]
      }

      template {
        destination = "secrets/keys.env"
        env         = true
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/wasmesh" }}
          WASMESH_NODE_KEY={{ .node_key }}
          WASMESH_ADMIN_KEYS={{ .admin_key }}
          {{ end }}
          {{ range nomadService "wasmesh-coordinator" }}
          WASMESH_COORDINATOR=http://{{ .Address }}:{{ .Port }}
          {{ end }}
        EOT
      }

      env {
        # Stable across reschedules of the same slot of the group, like a pod's name.
        WASMESH_NODE_ID   = "node-${NOMAD_ALLOC_INDEX}"
        WASMESH_ADVERTISE = "http://${NOMAD_ADDR_http}"
        RUST_LOG          = "info"
      }

      # A stopping node finishes what it runs (its leases) before it leaves.
      kill_timeout = "120s"

      resources {
        cpu    = 2000
        memory = 1024
      }
    }
  }
}
