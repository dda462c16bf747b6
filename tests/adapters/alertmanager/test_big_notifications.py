"""A big notification is unpacked in bounded, resumable slices, and never holds up another sender's acknowledgement."""

from __future__ import annotations

import json
import threading
import time

import pytest

from runbot.adapters.alertmanager import queries
from runbot.adapters.alertmanager import unpack as unpack_module
from runbot.adapters.alertmanager.payload import CHUNKED_ABOVE, PayloadError, check, parse
from runbot.adapters.alertmanager.processor import wait_idle

from .conftest import AUTH
from .samples import alert, payload

BIG = 36_000  # alerts in one legal notification (just under the default 4 MiB body cap)
WINDOW = 20.0  # seconds of measurement at most


def big_body(n: int, receiver: str = "bulk") -> bytes:
    """n small alerts in one notification, as compact as Alertmanager's encoder writes them."""
    alerts = [{"status": "firing", "labels": {"alertname": "Bulk", "i": str(i)}, "startsAt": "2024-05-01T10:00:00Z"}
              for i in range(n)]  # fmt: skip
    body = {"version": "4", "groupKey": '{}:{alertname="Bulk"}', "status": "firing", "receiver": receiver,
            "groupLabels": {"alertname": "Bulk"}, "alerts": alerts}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def post_raw(bot, body: bytes):
    return bot.client.post("/webhooks/alertmanager", content=body,
                           headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip


def delivery(bot, delivery_id: int) -> dict:
    """The delivery as the API shows it (with `unpacked`, and the counts so far while it is in slices)."""
    with bot.rt.db.read() as conn:
        found = queries.delivery(conn, delivery_id)
    assert found is not None
    return found


def test_a_big_notification_is_unpacked_slice_by_slice_and_resumes_after_a_crash(make_bot, monkeypatch):
    bot = make_bot(alertmanager_process=False, alertmanager_batch_size=100)  # no worker: we drive the batches
    r = post_raw(bot, big_body(1_000))
    assert r.status_code == 200
    delivery_id = r.json()["delivery"]
    processor = bot.intake.processor
    for n in (1, 2, 3):
        report = processor.process_batch()
        assert report.unpacked.alerts == 100 and report.unpacked.partial == 1  # one slice per transaction
        row = delivery(bot, delivery_id)
        assert row["unpacked"] == 100 * n and row["processed_at"] is None and row["new"] == 100 * n
    assert len(bot.alerts()) == 300

    # a slice whose transaction fails after its alerts were written: rolled back whole, cursor and all
    real_store = unpack_module.store

    def store_then_fail(conn, jobs):
        real_store(conn, jobs)
        raise RuntimeError("the host lost power mid-slice")

    monkeypatch.setattr(unpack_module, "store", store_then_fail)
    with pytest.raises(RuntimeError):
        processor.process_batch()
    monkeypatch.setattr(unpack_module, "store", real_store)
    assert delivery(bot, delivery_id)["unpacked"] == 300 and len(bot.alerts()) == 300

    # the process dies (its parsed body is gone); the next one resumes at the next slice
    bot.stop()
    after = make_bot(alertmanager_batch_size=100)
    assert wait_idle(after.intake.processor, after.rt.db, timeout=30)
    row = delivery(after, delivery_id)
    assert row["processed_at"] is not None and row["unpacked"] == 1_000
    assert (row["new"], row["duplicates"], row["error"]) == (1_000, 0, None)
    alerts = after.alerts()
    assert len(alerts) == 1_000 and len({a["labels"]["i"] for a in alerts}) == 1_000  # nothing lost, nothing doubled
    assert after.client.get("/metrics").text.count('runbot_intake_backlog_alerts{stage="unpack"} 0.0') == 1


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_36000_alert_notification_does_not_delay_another_senders_acks(make_bot, request, backend):
    settings = {} if backend == "sqlite" else {"database_url": request.getfixturevalue("pg_url")}
    bot = make_bot(**settings)
    body = big_body(BIG)
    assert len(body) <= bot.rt.settings.alertmanager_max_body_bytes  # a legal notification
    latencies: list[float] = []
    stop = threading.Event()

    def stream() -> None:  # another sender: 1-alert notifications, one after the other
        while not stop.is_set():
            started = time.perf_counter()
            r = bot.post(payload(alert("Other", instance=f"i-{len(latencies)}"), receiver="other"))
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200, r.text

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        time.sleep(0.3)  # the stream is flowing before the big one lands
        big = post_raw(bot, body)
        assert big.status_code == 200 and big.json()["alerts"] == BIG
        big_id = big.json()["delivery"]
        # measure while the intake worker unpacks it (every slice one transaction beside the stream's commits),
        # until it is done or for WINDOW seconds: the worker yields to acknowledgements, so under a steady stream
        # it takes longer than that, and the rest is worked off after the test as it would be after a burst
        started = time.monotonic()
        while delivery(bot, big_id)["processed_at"] is None and time.monotonic() - started < WINDOW:
            time.sleep(0.2)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        sender.join(15)
    done = delivery(bot, big_id)["unpacked"]
    bot.stop()  # before its throwaway PostgreSQL database is dropped
    assert done >= 10 * bot.rt.settings.alertmanager_batch_size, f"only {done} alerts unpacked in {seconds:.1f}s"
    assert len(latencies) >= 20, latencies
    worst, tail = max(latencies), p99(latencies)
    print(f"{backend}: {len(latencies)} acks while {done} of {BIG} alerts were unpacked in {seconds:.1f}s; "
          f"p99 {tail * 1000:.0f} ms, max {worst * 1000:.0f} ms")
    assert tail < 1.0, f"p99 of the other sender's acks: {tail:.3f}s"


def test_a_big_body_is_checked_in_chunks_with_the_same_verdicts_and_field_names():
    body = json.loads(big_body(3_000))
    assert len(json.dumps(body)) > CHUNKED_ABOVE  # the chunked path
    body["alerts"][2_600]["status"] = "weird"
    body["alerts"][2_601]["startsAt"] = "nope"
    with pytest.raises(PayloadError) as big:
        check(json.dumps(body).encode())
    small = {**body, "alerts": body["alerts"][2_600:2_602]}
    with pytest.raises(PayloadError) as few:
        check(json.dumps(small).encode())
    assert [p["field"] for p in big.value.problems] == ["alerts[2600].status", "alerts[2601].startsAt"]
    assert [p["message"] for p in big.value.problems] == [p["message"] for p in few.value.problems]
    assert [p["field"] for p in few.value.problems] == ["alerts[0].status", "alerts[1].startsAt"]
    assert len(parse(big_body(3_000)).alerts) == 3_000
