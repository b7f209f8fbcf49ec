"""Long-haul link benchmark: `visionnode transfer upload` vs a single-stream upload vs `rclone copy`.

Builds a simulated international link on this machine and moves the same shard-like files over it:

    [client netns] veth ==== 100 ms each way (200 ms RTT), 500 Mbit/s, optional loss ==== veth [server netns]
                                                                                           weed mini (S3)

Shaping: `tc netem delay ... rate ...` on each veth when the kernel has sch_netem. Kernels without it (this
machine's: CONFIG_NET_SCH_NETEM is not set) get `tbf` for the rate plus a small NFQUEUE agent (in this file)
that holds every arriving packet for the one-way delay and drops `--loss` percent; that needs `iptables`.

Both namespaces get the TCP buffers a host tuned for long fat pipes would have (tcp_rmem/tcp_wmem up to
64 MiB, no slow start after idle); the kernel's default congestion control is kept. All three clients run
under the same settings. A plain-TCP run first measures what the link gives on this machine right now (the
CPU is shared), so the S3 figures can be read against both the nominal capacity and that ceiling. The S3
server binds the server namespace's veth address; clients run in the client namespace (`ip netns exec`), so
every byte crosses the shaped link and no traffic leaves the namespaces this script made. Namespaces,
processes and data are removed on exit (normal, error, Ctrl-C, SIGTERM).

Needs root (ip netns, tc, iptables), rclone, and the project venv. Run:
    .venv/bin/python benchmarks/bench_long_haul.py [--size-gb 1] [--loss 0.01] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SERVER_IP, CLIENT_IP = "10.231.0.1", "10.231.0.2"
S3_PORT = 8333
ACCESS_KEY, SECRET_KEY = "benchkey", "bench-secret-not-real"
BUCKET = "bench"


@dataclass
class Link:
    """The namespaces and veth pair of one run; names carry the PID so parallel runs never collide."""

    tag: str = field(default_factory=lambda: str(os.getpid()))
    agents: list[subprocess.Popen] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        return f"vnbench-srv-{self.tag}"

    @property
    def client_ns(self) -> str:
        return f"vnbench-cli-{self.tag}"

    @property
    def server_if(self) -> str:
        return f"vbs{self.tag}"[:15]

    @property
    def client_if(self) -> str:
        return f"vbc{self.tag}"[:15]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def build_link(link: Link, rate_mbit: float, delay_ms: float, loss_pct: float) -> str:
    """Create the namespaces, veth pair and shaping; returns how the delay is applied."""
    sh("ip", "netns", "add", link.server_ns)
    sh("ip", "netns", "add", link.client_ns)
    sh("ip", "link", "add", link.server_if, "netns", link.server_ns, "type", "veth",
       "peer", "name", link.client_if, "netns", link.client_ns)
    method = "tc netem"
    for ns, dev, ip in ((link.server_ns, link.server_if, SERVER_IP),
                        (link.client_ns, link.client_if, CLIENT_IP)):
        sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh(*in_ns(ns, "ip", "addr", "add", f"{ip}/30", "dev", dev))
        sh(*in_ns(ns, "ip", "link", "set", dev, "up"))
        # A host tuned for a long fat pipe: autotuned buffers may grow well past the 12.5 MB BDP.
        for key, value in (("net.ipv4.tcp_rmem", "4096 131072 67108864"),
                           ("net.ipv4.tcp_wmem", "4096 65536 67108864"),
                           ("net.ipv4.tcp_slow_start_after_idle", "0")):
            sh(*in_ns(ns, "sysctl", "-q", "-w", f"{key}={value}"))
        # Each direction: one-way delay, the link's rate and a queue deep enough for the BDP.
        netem = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{delay_ms:g}ms",
                 "rate", f"{rate_mbit:g}mbit", "limit", "100000"] + (["loss",
                                                                      f"{loss_pct:g}%"] if loss_pct else [])
        if sh(*in_ns(ns, *netem), check=False).returncode == 0:
            continue
        # This kernel has no sch_netem (CONFIG_NET_SCH_NETEM unset): rate via tbf on egress, delay (and loss)
        # via an NFQUEUE agent that holds each *arriving* packet's verdict for `delay_ms` (payload stays in
        # the
        # kernel). Holding packets on arrival, not departure, matters: a held outgoing skb still belongs to
        # its socket, and TCP Small Queues would then throttle the sender to ~2 packets per delay.
        method = "tbf rate + NFQUEUE delay agent (no sch_netem in this kernel)"
        burst_kb = max(64, int(rate_mbit * 1e6 / 8 / 1000 / 250))  # >= one 64 KB GSO packet and rate/HZ
        sh(*in_ns(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit:g}mbit",
                  "burst", f"{burst_kb}kb", "latency", "200ms"))
        sh(*in_ns(ns, "iptables", "-A", "INPUT", "-i", dev, "-j", "NFQUEUE", "--queue-num", "0"))
        # GRO on the receiving veth hands the agent coalesced packets (as a real NIC's GRO would the stack).
        if shutil.which("ethtool"):
            sh(*in_ns(ns, "ethtool", "-K", dev, "gro", "on"), check=False)
        link.agents.append(subprocess.Popen(
            in_ns(ns, sys.executable, __file__, "--delay-agent", f"{delay_ms}", "--loss", f"{loss_pct}"),
            start_new_session=True))
    return method


def destroy_link(link: Link) -> None:
    for agent in link.agents:
        stop_process(agent)
    for ns in (link.server_ns, link.client_ns):
        sh("ip", "netns", "delete", ns, check=False)  # deleting a namespace removes its veth end too


def measured_rtt_ms(link: Link) -> float:
    """Median TCP connect time to the S3 port from the client namespace (SYN → SYN-ACK is one round trip)."""
    code = textwrap.dedent(f"""
        import socket, statistics, time
        times = []
        for _ in range(5):
            start = time.perf_counter()
            socket.create_connection(({SERVER_IP!r}, {S3_PORT}), timeout=5).close()
            times.append((time.perf_counter() - start) * 1000)
        print(statistics.median(times))
    """)
    out = sh(*in_ns(link.client_ns, sys.executable, "-c", code), check=False).stdout.strip()
    return float(out) if out else float("nan")


def start_s3(link: Link, data_dir: Path) -> subprocess.Popen:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = in_ns(link.server_ns, str(VENV_BIN / "weed"), "mini", f"-dir={data_dir}", f"-ip={SERVER_IP}",
                 f"-ip.bind={SERVER_IP}", f"-s3.port={S3_PORT}", "-webdav=false", "-admin.ui=false",
                 "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
                 f"-filer.localSocket={data_dir / 'filer.sock'}", f"-s3.localSocket={data_dir / 's3.sock'}",
                 f"-bucket={BUCKET}")
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    log = open(data_dir.parent / "weed.log", "ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited; see {data_dir.parent / 'weed.log'}")
        ok = sh(*in_ns(link.server_ns, "curl", "-sf", "-o", "/dev/null",
                       f"http://{SERVER_IP}:{S3_PORT}/healthz"),
                check=False).returncode == 0
        if ok and bucket_exists(link):
            return proc
        time.sleep(0.5)
    raise RuntimeError("weed mini did not become healthy in 60 s")


def bucket_exists(link: Link) -> bool:
    code = textwrap.dedent(f"""
        from visionnode.components.common.storage.s3 import s3_client
        s3_client().head_bucket(Bucket={BUCKET!r})
    """)
    return subprocess.run(in_ns(link.client_ns, sys.executable, "-c", code), env=client_env(),
                          capture_output=True).returncode == 0


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: weed and nothing else
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def client_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "VISIONNODE", "AWS_",
                                                                    "RCLONE"))}
    env.update(VISIONNODE_S3_ENDPOINT=f"http://{SERVER_IP}:{S3_PORT}", AWS_ACCESS_KEY_ID=ACCESS_KEY,
               AWS_SECRET_ACCESS_KEY=SECRET_KEY, VISIONNODE_PROGRESS="0",
               VISIONNODE_STATE_DIR=str(Path(tempfile.gettempdir()) / f"vnbench-state-{os.getpid()}"))
    env.update(extra or {})
    return env


def make_shards(directory: Path, total_bytes: int, file_bytes: int) -> int:
    """Incompressible shard-like files plus a ShardManifest, as `visionnode shard` would leave them."""
    from visionnode.components.common.artifacts import ClassIndex, ShardInfo, ShardManifest
    from visionnode.components.common.jsonio import sha256_file

    directory.mkdir(parents=True, exist_ok=True)
    shards, written, i = [], 0, 0
    while written < total_bytes:
        size = min(file_bytes, total_bytes - written)
        path = directory / f"train_{i:04d}.beton"
        with open(path, "wb") as fh:
            for left in range(size, 0, -(64 << 20)):
                fh.write(os.urandom(min(left, 64 << 20)))
        shards.append(ShardInfo(path.name, "train", 1000, size, sha256_file(path), {0: 1000}))
        written += size
        i += 1
    ShardManifest(ClassIndex(["n0"], ["synthetic"]), shards, {"generator": "bench_long_haul"}).save(directory)
    return written


def run_visionnode(link: Link, shards: Path, prefix: str, concurrency: int, part_mb: int, out: Path) -> dict:
    summary = out / f"{prefix}.json"
    argv = in_ns(link.client_ns, str(VENV_BIN / "visionnode"), "transfer", "upload", str(shards),
                 f"s3://{BUCKET}/{prefix}", "--concurrency", str(concurrency), "--part-size", str(part_mb),
                 "--json", str(summary))
    start = time.perf_counter()
    done = subprocess.run(argv, env=client_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"visionnode transfer upload failed: {done.stderr.strip()[-500:]}")
    data = json.loads(summary.read_text())
    return {"seconds": data["seconds"], "wall_seconds": wall, "bytes": data["bytes_transferred"],
            "retries": data["retries"]}


RAW_SINK = textwrap.dedent("""
    import json, socket, sys, threading, time
    host, port, streams, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    server = socket.create_server((host, port))
    print("ready", flush=True)
    received, lock = [], threading.Lock()
    def sink(conn):
        while chunk := conn.recv(1 << 20):
            with lock:
                received.append((time.monotonic(), len(chunk)))
    threads = [threading.Thread(target=sink, args=(server.accept()[0],)) for _ in range(streams)]
    for t in threads: t.start()
    for t in threads: t.join()
    start = received[0][0]
    # steady state: skip the first 3 s of slow start, then bytes per second over the rest
    steady = [(t, n) for t, n in received if t - start >= 3.0]
    span = steady[-1][0] - steady[0][0]
    print(json.dumps({"mb_s": sum(n for _, n in steady) / span / 1e6}))
""")

RAW_SOURCE = textwrap.dedent("""
    import socket, sys, threading, time
    host, port, streams, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    block = bytes(1 << 20)
    def source():
        conn = socket.create_connection((host, port))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(block)
        conn.close()
    threads = [threading.Thread(target=source) for _ in range(streams)]
    for t in threads: t.start()
    for t in threads: t.join()
""")


def raw_tcp_ceiling(link: Link, streams: int, seconds: float = 12.0) -> float:
    """MB/s that plain TCP (no S3, no hashing) gets through the emulated link on this machine right now."""
    args = [SERVER_IP, "5201", str(streams), str(seconds)]
    sink = subprocess.Popen(in_ns(link.server_ns, sys.executable, "-c", RAW_SINK, *args),
                            stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        sink.stdout.readline()  # "ready"
        subprocess.run(in_ns(link.client_ns, sys.executable, "-c", RAW_SOURCE, *args), check=True,
                       timeout=seconds + 60)
        out, _ = sink.communicate(timeout=60)
        return json.loads(out.strip().splitlines()[-1])["mb_s"]
    finally:
        stop_process(sink)


SINGLE_STREAM = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from boto3.s3.transfer import TransferConfig
    from visionnode.components.common.storage.s3 import s3_client
    shards, bucket, prefix = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    client = s3_client()
    one_stream = TransferConfig(multipart_threshold=5 * 1024**3, max_concurrency=1, use_threads=False)
    files = sorted(shards.glob("*.beton"))
    start = time.perf_counter()
    for path in files:
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}", Config=one_stream)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "bytes": sum(p.stat().st_size for p in files)}))
""")


def run_single_stream(link: Link, shards: Path, prefix: str) -> dict:
    argv = in_ns(link.client_ns, sys.executable, "-c", SINGLE_STREAM, str(shards), BUCKET, prefix)
    start = time.perf_counter()
    done = subprocess.run(argv, env=client_env(), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"single-stream upload failed: {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": data["seconds"], "wall_seconds": wall, "bytes": data["bytes"], "retries": 0}


def run_rclone(link: Link, shards: Path, prefix: str, transfers: int, upload_concurrency: int,
               chunk_mb: int) -> dict:
    remote = {  # an S3 remote named BENCH, configured entirely by environment variables
        "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
        "RCLONE_CONFIG_BENCH_ENDPOINT": f"http://{SERVER_IP}:{S3_PORT}",
        "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
        "RCLONE_CONFIG": "/dev/null",
    }
    files = [p for p in shards.glob("*.beton")]
    argv = in_ns(link.client_ns, "rclone", "copy", str(shards), f"BENCH:{BUCKET}/{prefix}",
                 "--include", "*.beton", "--transfers", str(transfers),
                 "--s3-upload-concurrency", str(upload_concurrency), "--s3-chunk-size", f"{chunk_mb}M",
                 "--s3-upload-cutoff", f"{chunk_mb}M", "--checkers", "16", "--no-traverse",
                 "--buffer-size", f"{chunk_mb}M", "--retries", "1")
    start = time.perf_counter()
    done = subprocess.run(argv, env=client_env(remote), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"rclone copy failed: {done.stderr.strip()[-500:]}")
    return {"seconds": wall, "wall_seconds": wall, "bytes": sum(p.stat().st_size for p in files),
            "retries": 0}


# --------------------------------------------------------------------------------------------- delay agent
# Raw netlink NFQUEUE (linux/netfilter/nfnetlink_queue.h): bind queue 0, copy metadata only (no payload), let
# the kernel hand over whole GSO packets, and release packets in arrival order once their delay has passed
# with one batch verdict. Constant delay keeps FIFO order, so a batch verdict (all ids <= n) is exact.
NETLINK_NETFILTER, NFNL_SUBSYS_QUEUE = 12, 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NLM_F_REQUEST, NLMSG_ERROR, SO_RCVBUFFORCE = 1, 2, 33
NF_DROP, NF_ACCEPT = 0, 1


def _nl_attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nfq_msg(kind: int, attrs: list[bytes], queue: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, NLM_F_REQUEST, 0, 0) + body


def delay_agent(delay_ms: float, loss_pct: float) -> int:
    import collections
    import select

    delay_s, loss = delay_ms / 1000, loss_pct / 100
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    sock.bind((0, 0))
    sock.send(_nfq_msg(NFQNL_MSG_CONFIG, [_nl_attr(1, struct.pack("!BxH", 1, 0))]))  # CMD_BIND
    sock.send(_nfq_msg(NFQNL_MSG_CONFIG, [_nl_attr(2, struct.pack("!IB", 0, 1)),      # COPY_META
                                          _nl_attr(3, struct.pack("!I", 200_000)),    # queue maxlen
                                          _nl_attr(4, struct.pack("!I", 4)),          # mask: F_GSO
                                          _nl_attr(5, struct.pack("!I", 4))]))        # flags: F_GSO
    sock.setblocking(False)
    held: collections.deque[tuple[float, int]] = collections.deque()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else 1.0
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            _read_packets(sock, held, delay_s, loss)
        now, last = time.monotonic(), None
        while held and held[0][0] <= now:
            last = held.popleft()[1]
        if last is not None:
            sock.send(_nfq_msg(NFQNL_MSG_VERDICT_BATCH, [_nl_attr(2, struct.pack("!II", NF_ACCEPT, last))]))


def _read_packets(sock: socket.socket, held, delay_s: float, loss: float) -> None:
    import random

    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        now, offset = time.monotonic(), 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                attr = offset + 20
                while attr + 4 <= offset + length:
                    attr_len, attr_kind = struct.unpack_from("=HH", data, attr)
                    if attr_kind & 0x7FFF == 1:  # NFQA_PACKET_HDR: packet id first
                        packet_id = struct.unpack_from("!I", data, attr + 4)[0]
                        if loss and random.random() < loss:
                            sock.send(_nfq_msg(NFQNL_MSG_VERDICT,
                                               [_nl_attr(2, struct.pack("!II", NF_DROP, packet_id))]))
                        else:
                            held.append((now + delay_s, packet_id))
                        break
                    attr += (attr_len + 3) & ~3
            elif kind == NLMSG_ERROR and struct.unpack_from("=i", data, offset + 16)[0]:
                print("delay agent: netlink error", struct.unpack_from("=i", data, offset + 16)[0],
                      file=sys.stderr)
            offset += (length + 3) & ~3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="total shard bytes to move (GB, 1e9)")
    parser.add_argument("--file-mb", type=int, default=128, help="size of each shard-like file (MB, 1e6)")
    parser.add_argument("--rate-mbit", type=float, default=500.0)
    parser.add_argument("--delay-ms", type=float, default=100.0, help="one-way delay per direction")
    parser.add_argument("--loss", type=float, default=0.0, help="packet loss per direction, percent")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--part-size", type=int, default=16, help="MiB, for visionnode and rclone")
    parser.add_argument("--rclone-transfers", type=int, default=4)
    parser.add_argument("--rclone-upload-concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="runs per method; medians are reported")
    parser.add_argument("--methods", default="visionnode,single,rclone")
    parser.add_argument("--delay-agent", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.delay_agent is not None:  # internal: runs inside one namespace, started by build_link
        return delay_agent(args.delay_agent, args.loss)
    if os.geteuid() != 0:
        print("needs root for ip netns / tc", file=sys.stderr)
        return 2

    link = Link()
    work = Path(tempfile.mkdtemp(prefix=f"vnbench-{link.tag}-"))
    server: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        total = make_shards(work / "shards", int(args.size_gb * 1e9), args.file_mb * 1_000_000)
        shaping = build_link(link, args.rate_mbit, args.delay_ms, args.loss)
        server = start_s3(link, work / "s3")
        capacity = args.rate_mbit * 1e6 / 8 / 1e6  # MB/s on the wire, before any header overhead
        print(f"link: {args.rate_mbit:g} Mbit/s = {capacity:.1f} MB/s, one-way delay {args.delay_ms:g} ms "
              f"(ping RTT {measured_rtt_ms(link):.0f} ms), loss {args.loss:g}%; "
              "tcp_rmem/tcp_wmem max 64 MiB, tcp_slow_start_after_idle=0 in both namespaces; shaping: "
              f"{shaping}")
        ceiling = raw_tcp_ceiling(link, streams=4)
        print(f"plain TCP through this link right now (4 streams, no S3, steady state): {ceiling:.1f} MB/s "
              f"= {ceiling / capacity:.2f} of the link (the ceiling this shared machine allows)")
        print(f"data: {total / 1e9:.2f} GB in {len(list((work / 'shards').glob('*.beton')))} files "
              f"of {args.file_mb} MB; server weed mini in {link.server_ns}, clients in {link.client_ns}")
        runners = {
            "visionnode": lambda p: run_visionnode(link, work / "shards", p, args.concurrency, args.part_size,
                                                   work),
            "single": lambda p: run_single_stream(link, work / "shards", p),
            "rclone": lambda p: run_rclone(link, work / "shards", p, args.rclone_transfers,
                                           args.rclone_upload_concurrency, args.part_size),
        }
        labels = {"visionnode": f"visionnode transfer upload (--concurrency {args.concurrency}, "
                                f"--part-size {args.part_size})",
                  "single": "single stream (boto3 upload_file, no multipart, max_concurrency=1)",
                  "rclone": f"rclone copy (--transfers {args.rclone_transfers}, --s3-upload-concurrency "
                            f"{args.rclone_upload_concurrency}, --s3-chunk-size {args.part_size}M)"}
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        rates: dict[str, list[float]] = {m: [] for m in methods}
        own_clock: dict[str, list[float]] = {m: [] for m in methods}
        for repeat in range(args.repeats):
            for method in methods:  # interleaved, so slow drifts of a shared machine hit all methods alike
                run = runners[method](f"{method}-{repeat}")
                # Every method on the same clock: the wall time of its whole command, process start included.
                rates[method].append(run["bytes"] / run["wall_seconds"] / 1e6)
                own_clock[method].append(run["bytes"] / run["seconds"] / 1e6)
                print(f"  run {repeat + 1} {method:<10} {rates[method][-1]:7.1f} MB/s "
                      f"({run['bytes'] / 1e9:.2f} GB in {run['wall_seconds']:.1f} s wall; the tool's own "
                      "clock "
                      f"{run['seconds']:.1f} s; retries {run['retries']})", flush=True)
        medians = {m: statistics.median(v) for m, v in rates.items()}
        print("\nmedian MB/s, wall clock (1 MB = 1e6 B)   MB/s   of link   vs rclone   "
              "(the tool's own clock)")
        for method in methods:
            vs_rclone = (f"{medians[method] / medians['rclone']:8.2f}x" if medians.get("rclone")
                         else "       -")
            print(f"  {labels[method]}\n  {'':<38}{medians[method]:6.1f}   {medians[method] / capacity:6.2f} "
                  " "
                  f"{vs_rclone}   ({statistics.median(own_clock[method]):.1f} MB/s)")
        print(f"  (of link = MB/s / {capacity:g} MB/s; plain-TCP ceiling measured above: {ceiling:.1f} MB/s)")
        print(json.dumps({"capacity_mb_s": capacity, "tcp_ceiling_mb_s": ceiling, "median_mb_s": medians,
                          "median_own_clock_mb_s": {m: statistics.median(v) for m, v in own_clock.items()},
                          "size_gb": total / 1e9, "rate_mbit": args.rate_mbit, "delay_ms": args.delay_ms,
                          "loss_pct": args.loss}))
        return 0
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); cleaning up", file=sys.stderr)
        return 130
    finally:
        stop_process(server)
        destroy_link(link)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(Path(tempfile.gettempdir()) / f"vnbench-state-{os.getpid()}", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
