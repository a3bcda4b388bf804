"""The event backbone against real RabbitMQ, PostgreSQL and worker processes."""

import psycopg
import pytest
from django.db import OperationalError
from django.db import connection

from leads.models import LeadEvent
from swiftex.events.publisher import BrokerPublisher, publish_pending
from swiftex.models import OutboxEvent, ProcessedEvent
from tests.support import ManagedProcess, post_json, queue_depth, rabbitmq, unacked, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ANA = {"name": "Ana", "phone": "+14155550123", "source": "web", "consent": True}
SUBSCRIBER_QUEUES = ("conversations.events", "analytics.events", "crmsync.events")


@pytest.fixture
def processes(tmp_path):
    started: list[ManagedProcess] = []

    def start(process: ManagedProcess) -> ManagedProcess:
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def worker(processes, tmp_path):
    return lambda lane: processes(ManagedProcess.lane(lane, tmp_path))


@pytest.fixture
def relay(processes, tmp_path):
    return lambda: processes(ManagedProcess.relay(tmp_path))


def depths() -> dict:
    return {name: queue_depth(name)[0] for name in SUBSCRIBER_QUEUES}


def relay_once() -> int:
    publisher = BrokerPublisher()
    try:
        return publish_pending(publisher)
    finally:
        publisher.close()


def test_a_commit_wakes_the_relay_which_publishes_to_every_subscriber_queue(client_for, relay):
    relay()
    assert post_json(client_for, "/api/v1/leads", ANA).status_code == 201

    wait_until(lambda: depths() == dict.fromkeys(SUBSCRIBER_QUEUES, 1), what="one copy of lead.created in each subscriber queue")
    wait_until(lambda: not OutboxEvent.objects.filter(published_at__isnull=True).exists(), what="outbox row marked published")


def test_a_batch_is_published_with_one_wait_for_confirms_and_every_row_arrives_once():
    from swiftex.events import emit

    for n in range(40):
        emit("lead.created", organization_id=None, data={"lead_id": n})
    publisher = BrokerPublisher()
    try:
        assert publish_pending(publisher) == 40
        assert publish_pending(publisher) == 0  # all marked published: nothing left to send
        emit("lead.created", organization_id=None, data={"lead_id": 40})
        assert publish_pending(publisher) == 1  # the same channel goes on numbering its confirms
    finally:
        publisher.close()
    assert depths() == dict.fromkeys(SUBSCRIBER_QUEUES, 41)
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()


def test_rows_confirmed_before_a_failure_are_marked_and_the_first_unconfirmed_one_records_it():
    from swiftex.events import emit
    from swiftex.events.publisher import PublishNotConfirmed

    first, second, third = (emit("lead.created", organization_id=None, data={"lead_id": n}) for n in range(3))

    class ConfirmsOnlyTheFirst:
        def publish_batch(self, events):
            raise PublishNotConfirmed("2 of 3 events not confirmed by RabbitMQ (no confirm within 5s)", events[:1])

    with pytest.raises(PublishNotConfirmed):
        publish_pending(ConfirmsOnlyTheFirst())
    rows = {row.pk: row for row in OutboxEvent.objects.all()}
    assert rows[first.pk].published_at is not None
    assert rows[second.pk].published_at is None and rows[second.pk].attempts == 1 and "not confirmed" in rows[second.pk].last_error
    assert rows[third.pk].published_at is None and rows[third.pk].attempts == 0  # published again next time


def test_subscribers_are_independent_a_stopped_one_holds_back_nobody(client_for, worker, relay):
    relay()
    worker("first_touch")  # conversations subscriber only; analytics and crmsync are "down"
    lead_id = post_json(client_for, "/api/v1/leads", ANA).json()["id"]

    wait_until(lambda: LeadEvent.objects.filter(lead_id=lead_id, kind="first_touch.started").exists(), what="first touch")
    assert depths() == {"conversations.events": 0, "analytics.events": 1, "crmsync.events": 1}

    worker("bulk")  # analytics and crmsync come back and catch up on their own queues
    wait_until(lambda: ProcessedEvent.objects.filter(consumer__in=["analytics", "crmsync"]).count() == 2, what="bulk subscribers")
    assert depths() == dict.fromkeys(SUBSCRIBER_QUEUES, 0)


def test_broker_down_the_request_still_succeeds_and_the_event_arrives_after_restart(client_for, relay):
    relay()
    rabbitmq("stop_app")
    try:
        response = post_json(client_for, "/api/v1/leads", ANA)
        assert response.status_code == 201
        wait_until(lambda: OutboxEvent.objects.get().attempts >= 1, what="the relay to try and fail to publish")
        row = OutboxEvent.objects.get()
        assert row.published_at is None and row.last_error
    finally:
        rabbitmq("start_app")

    # The running relay notices the broker is back on its own and publishes.
    wait_until(lambda: OutboxEvent.objects.filter(published_at__isnull=False).exists(), timeout=60, what="publish after restart")
    assert depths() == dict.fromkeys(SUBSCRIBER_QUEUES, 1)


def test_lanes_reconnect_after_a_broker_restart_and_keep_handling_and_acking_events(client_for, worker, relay):
    relay()
    worker("first_touch")  # conversations events, one at a time in the pool
    worker("bulk")  # analytics and crmsync events, in batches
    rabbitmq("stop_app")
    rabbitmq("start_app")
    wait_until(lambda: all(queue_depth(name)[1] == 1 for name in SUBSCRIBER_QUEUES), timeout=60, what="the lanes to consume again")

    lead_id = post_json(client_for, "/api/v1/leads", ANA).json()["id"]
    wait_until(lambda: LeadEvent.objects.filter(lead_id=lead_id, kind="first_touch.started").exists(), timeout=30, what="first touch")
    wait_until(lambda: ProcessedEvent.objects.filter(consumer__in=["analytics", "crmsync"]).count() == 2, what="bulk subscribers")
    # Acked, not just handled: after a reconnect an ack that never comes fills the
    # prefetch window, and the lane stops getting events altogether.
    wait_until(lambda: sum(unacked(name) for name in SUBSCRIBER_QUEUES) == 0, timeout=10, interval=0.5, what="every event acked")
    assert depths() == dict.fromkeys(SUBSCRIBER_QUEUES, 0)


def test_worker_killed_mid_task_the_event_is_redelivered_and_handled_once(client_for, worker):
    lead_id = post_json(client_for, "/api/v1/leads", ANA).json()["id"]

    event_id = str(OutboxEvent.objects.get().event_id)

    # An uncommitted ledger row for the same event makes the first-touch task's
    # insert wait on the unique key: the task is stuck mid-execution.
    params = connection.settings_dict
    connect = lambda **kw: psycopg.connect(dbname=params["NAME"], host=params["HOST"], user=params["USER"], **kw)  # noqa: E731
    with connect() as blocker, connect(autocommit=True) as observer:
        blocker.execute(
            "INSERT INTO swiftex_processedevent (consumer, event_id, processed_at) VALUES (%s, %s, now())",
            ["conversations.first_touch", event_id],
        )
        first = worker("first_touch")
        assert relay_once() == 1
        wait_until(
            lambda: observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", [params["NAME"]]
            ).fetchone()[0] == 1,
            what="the first-touch task to block on the ledger's unique key",
        )
        first.kill()
        blocker.rollback()

    # The killed worker's statement may still finish server-side once the lock
    # is released; either way the redelivered task must not write a second time.
    second = worker("first_touch")
    wait_until(lambda: f"lead.created {event_id} handled" in second.log(), what="the redelivered event to be handled by the new worker")
    assert LeadEvent.objects.filter(lead_id=lead_id, kind="first_touch.started").count() == 1
    assert ProcessedEvent.objects.filter(consumer="conversations.first_touch").count() == 1


def test_the_same_event_delivered_twice_is_handled_once(client_for, worker):
    lead_id = post_json(client_for, "/api/v1/leads", ANA).json()["id"]
    assert relay_once() == 1
    OutboxEvent.objects.update(published_at=None)  # as if the confirm was lost: publish again
    assert relay_once() == 1

    worker("first_touch")
    wait_until(lambda: queue_depth("conversations.events")[0] == 0 and queue_depth("first_touch")[0] == 0, what="both copies consumed")
    wait_until(lambda: LeadEvent.objects.filter(kind="first_touch.started").exists(), what="first touch")
    assert LeadEvent.objects.filter(lead_id=lead_id, kind="first_touch.started").count() == 1


def test_malformed_event_is_dead_lettered_not_retried_forever(worker):
    from django.conf import settings as dj_settings
    from kombu import Connection, Exchange, Producer

    worker("first_touch")
    with Connection(dj_settings.CELERY_BROKER_URL) as conn:
        Producer(conn.default_channel).publish(
            {"type": "lead.created", "data": {"lead_id": "not-a-number"}, "id": "x"},
            exchange=Exchange(dj_settings.SWIFTEX_EVENTS_EXCHANGE, type="topic"),
            routing_key="lead.created",
        )
    wait_until(lambda: queue_depth("swiftex.dead")[0] >= 1, what="message in the dead-letter queue")
    assert queue_depth("conversations.events")[0] == 0


def test_an_in_pool_subscriber_acks_each_event_after_its_handler_and_requeues_one_that_failed(monkeypatch):
    """The first touch's way of consuming: handlers run on pool threads, acks happen on
    the consumer's thread, and an event whose handler raised comes back from RabbitMQ."""
    import socket
    import time

    from celery.concurrency.thread import TaskPool
    from django.conf import settings as dj_settings
    from kombu import Connection, Consumer, Producer, Queue

    from swiftex.events import consumer

    monkeypatch.setattr(consumer, "REQUEUE_DELAY", 0.01)
    calls: list[str] = []

    def handler(event: dict) -> None:
        calls.append(event["id"])
        if event["id"] == "b" and calls.count("b") == 1:
            raise ConnectionError("could not hand over to the task")

    pool = TaskPool(limit=4)
    pool.start()
    queue = Queue("test.in_pool", durable=False)
    try:
        with Connection(dj_settings.CELERY_BROKER_URL) as conn:
            channel = conn.channel()
            queue(channel).declare()
            queue(channel).purge()
            for event_id in "abc":
                Producer(channel).publish({"id": event_id, "type": "t", "data": {}}, routing_key=queue.name, serializer="json")
            runner = consumer.PoolRunner("test", handler, pool)
            with Consumer(channel, queues=[queue], callbacks=[runner.add], accept=["json"], prefetch_count=10):
                deadline = time.monotonic() + 10
                while (sorted(calls) != ["a", "b", "b", "c"] or runner.in_flight or runner.outcomes) and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=0.05)
                    except socket.timeout:
                        pass
                    runner.flush_if_due()
            channel.close()  # anything left unacked would now go back to the queue
            assert sorted(calls) == ["a", "b", "b", "c"]
            assert queue_depth(queue.name)[0] == 0
            queue(conn.default_channel).delete()
    finally:
        pool.stop()


class _Message:
    """What Batcher needs of a kombu message: ack, or reject to the dead-letter queue."""

    def __init__(self, event_id: str) -> None:
        self.event_id, self.acked, self.rejected = event_id, False, False
        self.properties = {"message_id": event_id}

    def ack(self) -> None:
        self.acked = True

    def reject(self, requeue: bool) -> None:
        assert requeue is False
        self.rejected = True


def _batch_of(batcher, ids: str) -> dict[str, _Message]:
    messages = {event_id: _Message(event_id) for event_id in ids}
    for event_id, message in messages.items():
        batcher.add({"id": event_id, "type": "lead.status_changed", "data": {}}, message)
    return messages


def test_one_event_that_keeps_failing_is_dead_lettered_and_the_rest_of_its_batch_goes_through(monkeypatch):
    """A follow-up event naming a lead deleted meanwhile used to fail its whole batch for ever,
    stopping that subscriber for every tenant."""
    from swiftex.events import consumer

    handled: list[str] = []

    def handler(events: list[dict]) -> None:
        if any(event["id"] == "poison" for event in events):
            raise RuntimeError("insert or update violates foreign key constraint")
        handled.extend(event["id"] for event in events)

    batcher = consumer.Batcher("followups", handler, flush_seconds=0)
    poison = None
    for round_ in range(consumer.MAX_STRIKES):
        messages = _batch_of(batcher, ["a" + str(round_), "poison" if poison is None else "b" + str(round_)])
        poison = poison or messages["poison"]
        batcher.retry_at = 0  # do not wait out the backoff in a test
        batcher.flush()
        assert all(m.acked for event_id, m in messages.items() if event_id != "poison")
    assert poison.rejected and not poison.acked and batcher.pending == []
    assert "poison" not in handled and {"a0", "a1", "a2", "b1", "b2"} <= set(handled)


@pytest.mark.parametrize("error", [OperationalError("connection refused"), RuntimeError("something else")])
def test_when_every_event_fails_it_is_an_outage_and_nothing_is_dead_lettered(error):
    """And the one-by-one runs stop early: they happen on the consumer's loop, and in an
    outage each may wait out a connection timeout."""
    from swiftex.events import consumer

    calls: list[int] = []

    def handler(events: list[dict]) -> None:
        calls.append(len(events))
        raise error

    batcher = consumer.Batcher("followups", handler, flush_seconds=0)
    messages = _batch_of(batcher, [str(n) for n in range(20)])
    for _ in range(consumer.MAX_STRIKES + 2):
        batcher.retry_at = 0
        batcher.flush()
    assert not any(m.rejected or m.acked for m in messages.values())
    assert sorted(event["id"] for event, _ in batcher.pending) == sorted(str(n) for n in range(20))
    singles = calls.count(1)
    assert singles == (0 if isinstance(error, OperationalError) else (consumer.MAX_STRIKES + 2) * consumer.ISOLATION_PROBES)


def test_bad_events_at_the_head_of_a_batch_cannot_hide_the_good_ones_behind_them():
    from swiftex.events import consumer

    bad = {f"bad{n}" for n in range(consumer.ISOLATION_PROBES)}

    def handler(events: list[dict]) -> None:
        if any(event["id"] in bad for event in events):
            raise RuntimeError("names a row that is gone")

    batcher = consumer.Batcher("followups", handler, flush_seconds=0)
    messages = _batch_of(batcher, [*sorted(bad), "good1", "good2"])
    for _ in range(2):  # the first one-by-one run stops after the bad ones and moves them last
        batcher.retry_at = 0
        batcher.flush()
    assert messages["good1"].acked and messages["good2"].acked  # found behind the bad ones
    for round_ in range(consumer.MAX_STRIKES + 1):  # events keep arriving: evidence the database is fine
        messages |= _batch_of(batcher, [f"later{round_}"])
        batcher.retry_at = 0
        batcher.flush()
    assert all(messages[event_id].rejected for event_id in bad) and batcher.pending == []
    assert all(m.acked for event_id, m in messages.items() if event_id not in bad)


@pytest.mark.django_db(transaction=True)
def test_a_batch_after_the_database_dropped_its_connection_gets_a_new_one():
    """Batches run on the consumer's own thread, which no request or task ever resets: a
    connection broken by a PostgreSQL restart used to fail every later batch of the lane."""
    from django.db import connection

    from leads.models import Organization
    from swiftex.events import consumer

    def handler(events: list[dict]) -> None:
        Organization.objects.count()  # outside a transaction, as the followups subscriber reads

    batcher = consumer.Batcher("followups", handler, flush_seconds=0)
    connection.ensure_connection()
    connection.connection.close()  # the server went away under an idle connection
    messages = _batch_of(batcher, ["x1"])
    batcher.flush()
    assert messages["x1"].acked  # the dead connection was replaced before the handler ran
