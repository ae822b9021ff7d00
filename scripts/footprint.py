#!/usr/bin/env python3
"""The code an S4 event runs through, rmq-bus against expert lapin, counted by valgrind.

    cargo build --release --example bench
    scripts/footprint.py [EVENTS [SYSTEM...]]   # default 5 000, both systems; needs the local
                                                # broker, valgrind and rabbitmqctl

Runs S4 children under callgrind (cache simulation on, per-instruction counts), two per system:
one of EVENTS events and one of twice as many. Each child holds after preloading its backlog
(`BENCH_HOLD=1`) while its counters are zeroed, so the preload's publishing is left out. A cost
per event is the difference between the two rounds, divided by EVENTS: what a round pays once
(connecting, and lapin growing its buffers under the backlog's burst, which cost expert lapin
1.7 times what it cost rmq-bus) cancels out. It prints, per event:
- the cycle estimate of the child's workers and lapin's I/O threads (instructions + 10 per
  level-1 miss + 100 per last-level miss; the main thread, which connects the consumer and
  waits, left out) and of the consumer task alone;
- the hot code of the round of EVENTS: distinct 64-byte lines of code run at least once every
  two events (some instruction in the line ran at least EVENTS/2 times). Unlike the cache
  misses, this hardly moves when an unrelated change shifts the binary's layout, so it shows
  what a change to the delivery or emit path adds or saves;
- the functions whose hot code differs most between the two.

With one SYSTEM (`rmq-bus`), only its figures, to compare builds of the library.

Native CPU varies by machine (the ratio was 1.10x to 1.14x on 2.6 GHz AMD EPYCs, 1.23x on a
2.1 GHz Intel Xeon); these counts do not, for a given binary, beyond a spread between runs of
about 2 % for rmq-bus and up to 5 % for expert lapin.
"""

import collections
import os
import re
import subprocess
import sys
import tempfile
import uuid

BENCH = os.environ.get("BENCH", "target/release/examples/bench")
CONSUMER = {
    "rmq-bus": "rmq_bus::microservice::ConsumerSet::open::{{closure}}::{{closure}}",
    "lapin-expert": "bench::systems::expert::consume::{{closure}}",
}


def run(system, events, out):
    """One S4 child under callgrind, its counters zeroed once the backlog is preloaded."""
    queue = f"test-footprint-{uuid.uuid4().hex[:8]}"
    command = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--dump-instr=yes",
               f"--callgrind-out-file={out}", BENCH, "--child", system, "s4", queue, str(events)]
    child = subprocess.Popen(command, env={**os.environ, "BENCH_HOLD": "1"},
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in child.stderr:
            if line.strip() == "preloaded":
                break
            said.append(line)
        else:
            raise RuntimeError(f"{system}: the child ended before its backlog was preloaded:\n"
                               + "".join(said))
        # The preload's publishing is not the consumer's work. callgrind_control exits with 0
        # even when it reached no callgrind run, so its answer is read.
        zeroed = subprocess.run(["callgrind_control", "--zero", str(child.pid)],
                                capture_output=True, text=True, timeout=60)
        if f"sending command zero to pid {child.pid}" not in zeroed.stdout + zeroed.stderr:
            raise RuntimeError(f"{system}: callgrind's counters were not zeroed:\n"
                               f"{zeroed.stdout}{zeroed.stderr}")
        child.stdin.write("\n")
        child.stdin.close()
        said = child.stderr.read()
        if child.wait() != 0:
            raise RuntimeError(f"{system}: the child failed ({child.returncode}):\n{said}")
    except BaseException:
        child.kill()
        child.wait()
        raise
    finally:
        for name in (queue, f"{queue}.out"):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def inclusive(path):
    """Program totals, and the inclusive costs of every function, by event name."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", path],
                          check=True, capture_output=True, text=True).stdout
    events, totals, functions = [], {}, {}
    for line in text.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":")[1].split()
        numbers = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) \([ \d.]+%\)", line)]
        if not numbers:
            continue
        if "PROGRAM TOTALS" in line:
            totals = dict(zip(events, numbers))
        else:
            name = re.sub(r"\s+\[.*\]$", "", line.split(")  ", 1)[-1]).split(":", 1)[-1].strip()
            functions.setdefault(name, dict(zip(events, numbers)))
    return totals, functions


def cycles(costs):
    level1 = costs["I1mr"] + costs["D1mr"] + costs["D1mw"]
    last = costs["ILmr"] + costs["DLmr"] + costs["DLmw"]
    return costs["Ir"] + 10 * level1 + 100 * last


def hot_code(path, events):
    """Distinct 64-byte code lines run at least events/2 times, in all and by function."""
    names, runs, owner = {}, collections.Counter(), collections.defaultdict(set)
    function, address, skip = None, 0, False
    with open(path) as lines:
        for line in lines:
            if line.startswith(("fn=", "cfn=")):
                match = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
                if match and match.group(2):
                    names[match.group(1)] = match.group(2)
                if line.startswith("fn="):
                    function = names.get(match.group(1)) if match else line[3:].strip()
                continue
            if line.startswith("calls="):
                skip = True  # the next line is the call's inclusive cost, not code run here
                continue
            if not line[:1] or line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            position = parts[0]
            if position.startswith("+"):
                address += int(position[1:], 0)
            elif position.startswith("-"):
                address -= int(position[1:], 0)
            elif position != "*":
                address = int(position, 0)
            if skip:
                skip = False
                continue
            # A line runs as often as its most run instruction (a sum would count a line of 16
            # instructions run once every 32 events as run every two).
            runs[address >> 6] = max(runs[address >> 6], int(parts[2]) if len(parts) > 2 else 0)
            owner[function].add(address >> 6)
    hot = {line for line, count in runs.items() if count >= events // 2}
    return len(hot), {name: len(lines & hot) for name, lines in owner.items()}


def measure(system, events, directory):
    """Workers' and consumer task's cycle estimates, in all, for `events` events."""
    out = os.path.join(directory, f"{system}-{events}.callgrind")
    run(system, events, out)
    totals, functions = inclusive(out)
    # The preload's code (inlined but for its futures' drops) ran before the counters were zeroed.
    if any("bench::child::preload" in name for name in functions):
        raise RuntimeError(f"{system}: the preload was counted (were the counters zeroed?)")
    main_thread = functions["tokio::runtime::park::CachedParkThread::block_on"]
    workers = {k: totals[k] - main_thread.get(k, 0) for k in totals}
    return cycles(workers), cycles(functions[CONSUMER[system]]), out


def main():
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    systems = sys.argv[2:] or ["rmq-bus", "lapin-expert"]
    if any(system not in CONSUMER for system in systems) or len(set(systems)) < len(systems):
        sys.exit(f"systems: rmq-bus and/or lapin-expert, each once (got {systems})")
    figures = {}
    with tempfile.TemporaryDirectory() as directory:
        for system in systems:
            # Per event is the difference between a round of 2N events and one of N: what a
            # round costs once (connecting, lapin growing its buffers) cancels out.
            once, task_once, out = measure(system, events, directory)
            twice, task_twice, _ = measure(system, 2 * events, directory)
            figures[system] = ((twice - once) / events, (task_twice - task_once) / events,
                               *hot_code(out, events))
    if len(figures) == 1:
        (system, (per_event, task, hot, _)), = figures.items()
        print(f"{system}: {per_event:.0f} workers + I/O, {task:.0f} consumer task, {hot} hot lines")
        return
    (bus_cycles, bus_task, bus_hot, bus_by), (raw_cycles, raw_task, raw_hot, raw_by) = (
        figures["rmq-bus"], figures["lapin-expert"])
    print(f"per S4 event (rounds of {events} and {2 * events})   rmq-bus   expert lapin   ratio")
    print(f"cycle estimate, workers + I/O  {bus_cycles:8.0f}  {raw_cycles:12.0f}   {bus_cycles / raw_cycles:.3f}x")
    print(f"cycle estimate, consumer task  {bus_task:8.0f}  {raw_task:12.0f}   {bus_task / raw_task:.3f}x")
    print(f"hot code, 64-byte lines        {bus_hot:8d}  {raw_hot:12d}   {bus_hot - raw_hot:+d} lines")
    print("\nhot code lines by function, largest differences:")
    names = sorted(set(bus_by) | set(raw_by),
                   key=lambda n: raw_by.get(n, 0) - bus_by.get(n, 0))
    for name in names[:25]:
        print(f"{bus_by.get(name, 0):5d} {raw_by.get(name, 0):5d} "
              f"{bus_by.get(name, 0) - raw_by.get(name, 0):+5d}  {name[:110]}")


if __name__ == "__main__":
    main()
