"""wasmesh against Ray on the same machine, in one run: trivial-task throughput and
one-task-at-a-time latency. Started by scripts/bench-vs-ray.sh, which builds wasmesh,
starts a coordinator and 2 nodes on 127.0.0.1 and installs Ray into a virtual
environment; see BENCHMARKS.md.

Both sides are driven from this one Python process, so the client's own cost is the
same kind on both: Ray through its driver API, wasmesh through its HTTP contract
(../shared/design/API.md and docs/api.md) with one keep-alive connection.
"""

import argparse
import http.client
import json
import statistics
import sys
import time
import urllib.parse


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Wasmesh:
    """The few routes of the HTTP contract the scenarios use."""

    def __init__(self, url, worker):
        parsed = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port)
        self.worker = worker

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        if response.status >= 300:
            sys.exit(f"wasmesh {method} {path}: {response.status} {payload[:300]!r}")
        return json.loads(payload) if payload else None

    def action(self, salt, i):
        # Distinct args, so no job is answered from the result cache.
        return {"worker": self.worker, "args": [salt, str(i)]}

    def throughput(self, tasks, batch, salt):
        """Jobs/s: submit every job into a queue in batches, wait until it is complete."""
        started = time.perf_counter()
        queue = self.call("POST", "/compute/queues", {"name": f"vs-ray-{salt}"})["queue_id"]
        for first in range(0, tasks, batch):
            actions = [self.action(salt, i) for i in range(first, min(tasks, first + batch))]
            self.call("POST", f"/compute/queues/{queue}/jobs", {"actions": actions})
        while True:
            status = self.call("GET", f"/compute/queues/{queue}?wait_ms=30000")
            if status["is_complete"]:
                break
        elapsed = time.perf_counter() - started
        counts = status["counts"]
        if counts["succeeded"] != tasks:
            sys.exit(f"wasmesh: {counts} of {tasks} jobs")
        return tasks / elapsed

    def latency(self, tasks, salt):
        """Seconds from submission to result, one job at a time (one round trip each)."""
        samples = []
        for i in range(tasks):
            started = time.perf_counter()
            answer = self.call("POST", "/compute/jobs?wait_ms=30000", self.action(salt, i))
            samples.append(time.perf_counter() - started)
            if answer.get("result", {}).get("state") != "succeeded":
                sys.exit(f"wasmesh: job answered {answer}")
        return samples


class Ray:
    def __init__(self, cpus):
        import ray

        self.ray = ray
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)

        @ray.remote
        def noop():
            return None

        self.noop = noop
        # Warm the workers up, as wasmesh's modules are compiled before timing.
        ray.get([noop.remote() for _ in range(cpus * 50)])

    def throughput(self, tasks):
        started = time.perf_counter()
        self.ray.get([self.noop.remote() for _ in range(tasks)])
        return tasks / (time.perf_counter() - started)

    def latency(self, tasks):
        samples = []
        for _ in range(tasks):
            started = time.perf_counter()
            self.ray.get(self.noop.remote())
            samples.append(time.perf_counter() - started)
        return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the wasmesh coordinator")
    parser.add_argument("--worker", required=True, help="the trivial worker's id")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--latency-tasks", type=int, default=300)
    parser.add_argument("--batch", type=int, default=500, help="wasmesh jobs per request")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--cpus", type=int, default=2, help="Ray's num_cpus")
    args = parser.parse_args()

    mesh = Wasmesh(args.server, args.worker)
    ray = Ray(args.cpus)
    mesh.throughput(200, args.batch, "warm-up")
    mesh.latency(20, "warm-up-latency")

    rows = {"ray_tps": [], "mesh_tps": [], "ray_lat": [], "mesh_lat": []}
    stamp = str(time.time_ns())
    for round_ in range(args.rounds):
        # Alternate, so a slow minute of this machine hurts both sides alike.
        rows["ray_tps"].append(ray.throughput(args.tasks))
        rows["mesh_tps"].append(mesh.throughput(args.tasks, args.batch, f"{stamp}-{round_}"))
        rows["ray_lat"] += ray.latency(args.latency_tasks)
        rows["mesh_lat"] += mesh.latency(args.latency_tasks, f"{stamp}-lat-{round_}")

    ray_tps = statistics.median(rows["ray_tps"])
    mesh_tps = statistics.median(rows["mesh_tps"])
    us = lambda s: f"{s * 1e6:,.0f} us"
    print(f"{args.tasks} trivial tasks, then every result ({args.rounds} rounds, median)")
    print(f"  Ray ({args.cpus} CPUs)                 {ray_tps:10,.0f} tasks/s   (baseline)")
    print(f"  wasmesh (coordinator + 2 nodes)  {mesh_tps:10,.0f} jobs/s    {mesh_tps / ray_tps:.2f}x Ray")
    print(f"one at a time, submit -> result ({args.latency_tasks * args.rounds} each)")
    for name, key in (("Ray ray.get(f.remote())", "ray_lat"), ("wasmesh ?wait_ms, one trip", "mesh_lat")):
        p50, p99 = percentile(rows[key], 0.5), percentile(rows[key], 0.99)
        print(f"  {name:<31} p50 {us(p50):>10}   p99 {us(p99):>10}", end="")
        if key == "mesh_lat":
            base = percentile(rows["ray_lat"], 0.5)
            print(f"   {p50 / base:.2f}x Ray's p50")
        else:
            print("   (baseline)")


if __name__ == "__main__":
    main()
