"""``forestream demo --format``: what each format adds to the demo's commands, and the Avro
demo's bad records, each dead-lettered by the worker's own decoder under the reason the demo
counts it as (so the demo's accounting, dead letters == malformed sent, holds for Avro too).

The Avro demo itself runs by hand (``make demo FORMAT=avro``): a second full demo in ``make
test`` costs ~35 s of CI that the JSON demo's test already spends on the same story."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from forestream.demo_format import (
    AVRO_MALFORMED,
    REGISTRY_ENV,
    DemoRegistry,
    avro_feed,
    format_plan,
)
from forestream.errors import UserError
from forestream.producer.malformed import MAX_VALUE_BYTES
from forestream.wire.confluent import avro_contract, avro_encoder, writer_schema
from forestream.wire.headers import ReasonCode
from forestream.wire.schema import CategoricalFeature, FeatureSchema, NumericFeature
from forestream.worker.decoding import decode_batch
from forestream.worker.framed import ABSENT, framed_parser

SCHEMA = FeatureSchema(
    features=[
        NumericFeature(name="bill_length_mm", missing_seen=True),
        NumericFeature(name="flipper_length_mm"),
        NumericFeature(name="body_mass_g"),
        CategoricalFeature(name="island", categories=["Biscoe", "Dream"]),
        CategoricalFeature(name="sex", categories=["female", "male"], missing_seen=True),
    ]
)
ROW = {"bill_length_mm": 39.1, "flipper_length_mm": 181.0, "body_mass_g": 3750.0,
       "island": "Biscoe", "sex": None}  # fmt: skip
SCHEMA_ID = 7


def test_json_adds_only_the_input_format_and_avro_registers_and_reads_avro() -> None:
    json_plan, avro_plan = format_plan("json"), format_plan("avro")
    assert (json_plan.train_args, json_plan.worker_args) == ((), ("--input-format", "json"))
    assert not json_plan.needs_registry
    assert avro_plan.train_args == ("--register-schema",)
    assert avro_plan.worker_args == ("--input-format", "avro")
    assert avro_plan.needs_registry


def test_an_unknown_format_is_one_line_for_the_user() -> None:
    with pytest.raises(UserError, match="json or avro, not 'protobuf'"):
        format_plan("protobuf")


def test_the_local_registry_reaches_subprocesses_without_the_users_registry_auth() -> None:
    local = DemoRegistry(None)
    assert local.env() == {}  # not started: nothing to say yet
    local.url = "http://127.0.0.1:8080/apis/ccompat/v7"
    env = local.env()
    assert env[REGISTRY_ENV[0]] == local.url
    assert all(env[name] is None for name in REGISTRY_ENV[1:])
    given = DemoRegistry(" https://registry.example:8081 ")
    assert given.url == "https://registry.example:8081" and given.env() == {}


def test_every_bad_avro_record_is_dead_lettered_under_the_reason_it_was_sent_as() -> None:
    text = json.dumps(avro_contract(SCHEMA))
    feed = avro_feed(avro_encoder(SCHEMA_ID, text), ["flipper_length_mm", "body_mass_g"])
    made = [feed.bad(ROW) for _ in range(2 * len(AVRO_MALFORMED))]
    assert Counter(kind for kind, _ in made) == dict.fromkeys(AVRO_MALFORMED, 2)
    known = writer_schema(SCHEMA_ID, "AVRO", text)
    parse = framed_parser("avro", lambda i: known if i == SCHEMA_ID else ABSENT, SCHEMA)
    values = [feed.good(ROW)] + [value for _, value in made]
    decoded = decode_batch(values, SCHEMA, max_record_bytes=MAX_VALUE_BYTES, parse=parse)
    assert decoded.valid_indexes == [0]
    reasons = {r.index: r.code for r in decoded.rejects}
    assert [reasons[i + 1] for i in range(len(made))] == [kind for kind, _ in made]
    assert ReasonCode.UNKNOWN_SCHEMA_ID in reasons.values()
