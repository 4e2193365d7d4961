"""bench.profile's sorting of py-spy samples, on hand-written lines of its raw output.

``py-spy record --format raw --threads`` writes one line per distinct stack: the thread, then
the frames from the root to the leaf, then how many samples had that stack. The leaf-most
frame of forestream's own code decides the category; the main thread counts only inside the
worker's loop.
"""

from __future__ import annotations

from bench.profile import SIDE, STARTUP, WAITING, table, tally

BOOT = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"
MAIN = (
    "thread (100): MainThread;_run_module_as_main (<frozen runpy>:198);"
    "<module> (forestream/__main__.py:3);main (forestream/cli.py:40);"
    "Worker._run (forestream/worker/loop.py:260);Worker._loop (forestream/worker/loop.py:340)"
)
SCORE = (
    "DeliveryEngine.finish (forestream/worker/delivery/engine.py:178);"
    "Serving.score (forestream/worker/serving.py:80);"
    "process_records (forestream/worker/processing.py:95)"
)

LINES = [
    # the forest: sklearn's trees below the engine's frame, or the compiled forest itself
    f"{MAIN};{SCORE};score_isolating (forestream/worker/scoring.py:101);"
    "score_frame (forestream/worker/scoring.py:52);"
    "probabilities (forestream/worker/forest_engine.py:88);"
    "DecisionTreeClassifier.predict_proba (sklearn/tree/_classes.py:1040) 30",
    f"{MAIN};{SCORE};score_frame (forestream/worker/scoring.py:52);"
    "CompiledForest.predict_proba (forestream/worker/compiled_forest.py:241) 10",
    # the worker before the compiled forest: its tree-by-tree path in scoring.py
    f"{MAIN};{SCORE};_TreeByTree.__call__ (forestream/worker/scoring.py:140) 5",
    # decoding, with msgspec below it; encoding (a listcomp of encode_predictions)
    f"{MAIN};{SCORE};decode_batch (forestream/worker/decoding.py:90);"
    "_numeric_only (forestream/worker/decoding.py:208) 20",
    f"{MAIN};{SCORE};encode_predictions (forestream/worker/scoring.py:200);"
    "encode_predictions.<locals>.<listcomp> (forestream/worker/scoring.py:215) 4",
    # Kafka: a send, a flush serving delivery callbacks, a poll for records
    f"{MAIN};DeliveryEngine.finish (forestream/worker/delivery/engine.py:178);"
    "ConfluentProducer.send (forestream/edge/confluent/producer.py:135) 6",
    f"{MAIN};ConfluentProducer.flush (forestream/edge/confluent/producer.py:193);"
    "_Client._served (forestream/edge/confluent/client.py:140);"
    "_Delivery.done (forestream/edge/confluent/producer.py:60) 3",
    f"{MAIN};ConfluentGroupConsumer.poll_batch (forestream/edge/confluent/consumer.py:300);"
    "consume_available (forestream/edge/confluent/client.py:75) 7",
    # drift below the delivery engine's settling: drift decides, not the engine
    f"{MAIN};SerialAtLeastOnce._settle_out (forestream/worker/delivery/at_least_once.py:140);"
    "DriftMonitor.add_frame (forestream/worker/drift.py:120);"
    "_wrapfunc (numpy/_core/fromnumeric.py:57) 8",
    # a log line from the loop: structlog below any of our frames is logging
    f"{MAIN};Reporter.tick (forestream/worker/reporting.py:70);"
    "BoundLoggerBase._proxy_to_logger (structlog/_base.py:223) 2",
    # kafka-python's producer I/O thread, never in forestream's code
    f"thread (101): forestream-worker-0-out-network-thread;{BOOT};"
    "Sender.run (kafka/producer/sender.py:113);"
    "KafkaTCPTransport._sock_send (kafka/net/transport.py:223) 9",
    # a client's I/O thread woken in select(): waiting, not in the shares
    f"thread (102): kafka-io-forestream-worker-0-in;{BOOT};"
    "NetworkSelector._poll_once (kafka/net/selector.py:602);"
    "EpollSelector.select (selectors.py:468) 11",
    # the models topic's follower in consume(timeout): a side thread
    f"thread (103): model-follower;{BOOT};ModelFollower._run (forestream/worker/models.py:250);"
    "consume_available (forestream/edge/confluent/client.py:78) 12",
    # start-up: the main thread outside the loop, the model being loaded on its thread
    "thread (100): MainThread;<module> (forestream/__main__.py:3);"
    "worker (forestream/worker/cli.py:300);_compile_bytecode (<frozen importlib>:729) 40",
    f"thread (103): model-follower;{BOOT};"
    "ModelFollower._load_wanted (forestream/worker/models.py:340);"
    "unpickle_model (forestream/registry/store.py:80) 50",
    "thread (104) 3",  # the interpreter starting, before threading names the thread
]


def test_each_sample_goes_to_its_category() -> None:
    assert tally(LINES) == {
        "the forest": 45,
        "decode + validate": 20,
        "encoding predictions": 4,
        "Kafka: produce": 6 + 9,
        "Kafka: delivery (acks, callbacks)": 3,
        "Kafka: consume (and commits)": 7,
        "drift and monitoring": 8,
        "logging": 2,
        WAITING: 11,
        SIDE: 12,
        STARTUP: 40 + 50 + 3,
    }


def test_unknown_code_of_ours_is_other_and_the_table_leaves_out_start_up() -> None:
    counts = tally([f"{MAIN};Worker._between_batches (forestream/worker/loop.py:390) 1",
                    f"{MAIN};helper (forestream/somewhere/new.py:1) 3",
                    "thread (100): MainThread;main (forestream/cli.py:40) 96"])  # fmt: skip
    assert counts == {"delivery engine, batch bookkeeping": 1, "other": 3, STARTUP: 96}
    shown = table("test", counts)
    assert "| other | 75.0 % | 3 |" in shown
    assert "| all of the loop | 100 % | 4 |" in shown
    assert f"| {STARTUP} | | 96 |" in shown
