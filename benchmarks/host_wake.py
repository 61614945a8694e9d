"""What waking an idle process costs on this host (no Yap code involved).

Two processes on two cores play ping-pong over pipes, 200 round trips: the
responder either blocks in read() (parked, as an idle server worker waits in
epoll) or polls without blocking (spinning), and the pinger either sends back
to back or sleeps 50 ms before each ping (a turn after silence). Prints the
round trip's p50/p90 for each, then the host's cpuidle driver and C-states.
With a tokenizer folder, also one encode of a short utterance back to back and
after 50 ms of sleeping or of spinning on the same core: the server tokenizes
each utterance on the turn's path, after such a silence. docs/gpu-results.md
has the figures: the dev box (run 7) and the H200 (run 8).

    python3 benchmarks/host_wake.py [TOKENIZER_DIR]
"""

import glob
import os
import sys
import time

CPUS = sorted(os.sched_getaffinity(0))
A, B = CPUS[len(CPUS) // 3], CPUS[-1]  # two cores (on the GPU machine: not the engine core's)


def child(r: int, w: int, spin: bool) -> None:
    if spin:
        os.set_blocking(r, False)
    while True:
        if spin:
            while True:
                try:
                    b = os.read(r, 1)
                    break
                except BlockingIOError:
                    pass
        else:
            b = os.read(r, 1)
        if b == b"q":
            return
        os.write(w, b)


def run(spin: bool, gap: float, n: int = 200) -> tuple[float, float]:
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {A})
        child(r1, w2, spin)
        os._exit(0)
    os.sched_setaffinity(0, {B})
    ts = []
    for _ in range(n):
        if gap:
            time.sleep(gap)
        t = time.perf_counter()
        os.write(w1, b"x")
        os.read(r2, 1)
        ts.append((time.perf_counter() - t) * 1e6)
    os.write(w1, b"q")
    os.waitpid(pid, 0)
    ts.sort()
    return round(ts[len(ts)//2], 1), round(ts[int(len(ts)*0.9)], 1)


for spin in (False, True):
    for gap in (0, 0.05):
        print(f"responder {'spinning' if spin else 'parked  '} gap {gap*1e3:4.0f} ms: round trip p50/p90 us", run(spin, gap))


def rd(p: str) -> str:
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError as e:
        return f"({type(e).__name__})"


print("cpuidle driver:", rd("/sys/devices/system/cpu/cpuidle/current_driver"), "governor:", rd("/sys/devices/system/cpu/cpuidle/current_governor_ro"), rd("/sys/devices/system/cpu/cpuidle/current_governor"))
for d in sorted(glob.glob(f"/sys/devices/system/cpu/cpu{A}/cpuidle/state*")):
    print(" ", rd(d+"/name"), "latency us", rd(d+"/latency"), "disabled", rd(d+"/disable"))
print("cpufreq governor:", rd(f"/sys/devices/system/cpu/cpu{A}/cpufreq/scaling_governor"), "hypervisor:", "hypervisor" in rd("/proc/cpuinfo"))


def encode_after(tok, pause: str, n: int = 40) -> tuple[float, float]:
    """One encode's p50/p90 (us) after each pause: none, sleeping or spinning 50 ms."""
    text = "Could you tell me what the weather will be like tomorrow afternoon, and do I need an umbrella"
    ts = []
    for i in range(n):
        if pause == "sleep":
            time.sleep(0.05)
        elif pause == "spin":
            end = time.perf_counter() + 0.05
            while time.perf_counter() < end:
                pass
        t = time.perf_counter()
        tok.encode(f"{text} {i}?", add_special_tokens=False)
        ts.append((time.perf_counter() - t) * 1e6)
    ts.sort()
    return round(ts[len(ts)//2], 1), round(ts[int(len(ts)*0.9)], 1)


if len(sys.argv) > 1:
    from tokenizers import Tokenizer

    os.sched_setaffinity(0, {B})
    tok = Tokenizer.from_file(os.path.join(sys.argv[1], "tokenizer.json"))
    for pause in ("none", "none", "sleep", "spin"):
        print(f"tokenizer encode after pause {pause:5}: p50/p90 us", encode_after(tok, pause))
