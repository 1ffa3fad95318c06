#!/usr/bin/env python3
"""RabbitMQ's CPU per message, and a message's time from publish to delivery,
for each queue type the fleet could use.

    pip install pika
    python3 scripts/bench-queue-types.py                # 1,000 msg/s for 8 s, each type twice
    python3 scripts/bench-queue-types.py --rate 2000 --seconds 10 --rounds 3

Why: RabbitMQ takes the largest share of the two cores in a RabbitMQ fleet
run (docs/benchmarks.md), and the worker queues are quorum queues. This
measures what a queue of each type costs the broker for the same traffic:
persistent 600-byte messages published in bursts of 20 on a plain channel,
consumed with prefetch 200 and a `multiple` ack every 50 (like the fleet's
batches), at a fixed rate, reading the broker's CPU time from
/proc/<beam.smp>/stat. Each message carries its publish time, so the
consumer also gives the time from publish to delivery (p50, p99): a hop
of the saga waits that long on top of the relay and the worker. The
publisher is a plain channel so that the client's round trips do not pace
the run; the rate is the same for every type, so the broker's CPU per
message is comparable. Run it on an idle machine, on the same host as the
broker (it reads the broker's /proc entry).

Types: quorum (the fleet's worker queues), classic (durable; version 1 on
RabbitMQ 3.x), classic-v2 (durable, `x-queue-version: 2`, the only classic
queue on RabbitMQ 4), transient (non-durable classic: nothing on disk).
"""

import argparse
import os
import subprocess
import threading
import time

import pika

TYPES = {
    "quorum": (True, {"x-queue-type": "quorum"}),
    "classic": (True, {"x-queue-type": "classic"}),
    "classic-v2": (True, {"x-queue-type": "classic", "x-queue-version": 2}),
    "transient": (False, {"x-queue-type": "classic"}),
}
BURST = 20
ACK_EVERY = 50
PADDING = b"x" * 580


def broker_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consume(params, queue, total, latencies):
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.basic_qos(prefetch_count=200)
    received = 0

    def on_message(chan, method, _properties, body):
        nonlocal received
        received += 1
        latencies.append(time.monotonic() - float(body[:20]))
        if received % ACK_EVERY == 0 or received == total:
            chan.basic_ack(method.delivery_tag, multiple=True)

    channel.basic_consume(queue, on_message)
    while received < total:
        connection.process_data_events(0.1)
    connection.close()


def measure(kind, rate, seconds, params, beam):
    durable, arguments = TYPES[kind]
    queue = f"bench-queue-types.{kind}.{os.getpid()}"
    connection = pika.BlockingConnection(params)
    channel = connection.channel()
    channel.queue_declare(queue, durable=durable, arguments=arguments)
    total = rate * seconds // BURST * BURST
    latencies = []
    consumer = threading.Thread(target=consume, args=(params, queue, total, latencies))
    consumer.start()
    time.sleep(0.5)

    cpu_before, started, sent = broker_cpu_seconds(beam), time.monotonic(), 0
    properties = pika.BasicProperties(delivery_mode=2)
    while sent < total:
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for _ in range(BURST):
            body = b"%020.6f" % time.monotonic() + PADDING
            channel.basic_publish("", queue, body, properties)
        sent += BURST
    consumer.join()
    elapsed = time.monotonic() - started
    cpu = broker_cpu_seconds(beam) - cpu_before
    channel.queue_delete(queue)
    connection.close()
    latencies.sort()
    p50 = 1000 * latencies[len(latencies) // 2]
    p99 = 1000 * latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]
    return total / elapsed, 1000 * cpu / total, cpu / elapsed, p50, p99


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="messages per second")
    parser.add_argument("--seconds", type=int, default=8, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per type, alternating")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    beam = subprocess.run(
        ["pgrep", "-o", "beam.smp"], capture_output=True, text=True, check=True
    ).stdout.strip()
    params = pika.ConnectionParameters(args.host)
    print(f"{args.rate} msg/s for {args.seconds} s, {args.rounds} round(s); broker pid {beam}")
    for round_number in range(1, args.rounds + 1):
        for kind in TYPES:
            rate, per_message, cores, p50, p99 = measure(
                kind, args.rate, args.seconds, params, beam
            )
            print(
                f"  round {round_number} {kind:<11} {rate:7.0f} msg/s  "
                f"broker {per_message:.3f} ms CPU per message, {cores:.2f} cores; "
                f"publish to delivery p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )


if __name__ == "__main__":
    main()
