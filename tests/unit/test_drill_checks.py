"""The drills' own checks, without services: what they build and how they read worker logs."""

from __future__ import annotations

import json
import random
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.record.memory_records import MemoryRecords

from bench.drills.fuzz import PASSES_TODAY, passes_the_decoder
from bench.drills.harness import DrillWorker
from bench.drills.kill9 import HELD, RELEASED, held_batch
from bench.drills.outputs import OutputTap
from bench.drills.rawbatch import corrupt_batch
from bench.drills.verify import digest, expect
from events.topics import TopicNames
from workers.traffic import Message


def test_the_corrupt_batch_passes_its_crc_and_cannot_be_decoded() -> None:
    batch = MemoryRecords(corrupt_batch(random.Random(1))).next_batch()
    assert batch is not None
    assert batch.validate_crc()  # a broker checking CRCs stores it
    with pytest.raises(zlib.error):
        list(batch)


def _worker(tmp_path: Path, text: str) -> DrillWorker:
    log = tmp_path / "worker.log"
    log.write_text(text)
    return DrillWorker(log, {})


def test_a_kill_while_offsets_were_held_counts_the_held_batch(tmp_path: Path) -> None:
    line = "batch: {} received, {} new, {} duplicate, 0 bot, 1 dead-lettered in 5 ms\n"
    text = line.format(10, 9, 0) + f"{HELD} 1.0 s\n{RELEASED}\n" + line.format(31, 20, 10) + HELD
    assert held_batch(_worker(tmp_path, text)) == 30


def test_a_kill_after_the_offset_commit_is_not_counted(tmp_path: Path) -> None:
    text = "batch: 10 received, 9 new, 0 duplicate, 0 bot, 1 dead-lettered\n"
    assert held_batch(_worker(tmp_path, text + f"{HELD}\n{RELEASED}\n")) is None


def test_inputs_that_pass_todays_decoder_are_expected_dead_lettered() -> None:
    valid = [
        Message(
            "events",
            b"a1",
            json.dumps(
                {
                    "event_id": "e1",
                    "type": "page_view",
                    "occurred_at": "2026-11-01T00:00:00Z",
                    "anonymous_id": "a1",
                }
            ).encode(),
            True,
            datetime(2026, 11, 1, tzinfo=UTC),
        )
    ]
    late, tally = passes_the_decoder(valid, 2, random.Random(3))
    assert tally == {kind: 2 for kind in PASSES_TODAY}
    exp = expect([])
    for m in late:
        assert json.loads(m.value)["event_id"].startswith("fuzz-")  # still JSON
        exp.refuse(m.topic, m.value, naming="properties")
    assert exp.invalid == len(late)
    assert exp.ids == set()
    assert all(exp.must_name[("events", digest(m.value))] == "properties" for m in late)


def test_the_output_tap_dedupes_re_sends_and_flags_recounts() -> None:
    tap = OutputTap("127.0.0.1:1", TopicNames("t."))
    letter = {"message_id": "events:0:5:abc", "received_at": "2026-11-30T10:00:00Z", "x": 1}
    tap._take("dead-letters", json.dumps(letter).encode())
    tap._take("dead-letters", json.dumps(letter).encode())  # a re-send
    restamped = {**letter, "received_at": "2026-11-30T10:01:00Z"}
    tap._take("dead-letters", json.dumps(restamped).encode())
    score = {"message_id": "L1:d1", "behaviour_score": 10}
    tap._take("score-changes", json.dumps(score).encode())
    tap._take("score-changes", json.dumps({**score, "behaviour_score": 20}).encode())
    assert {t: len(m) for t, m in tap.messages.items() if m} == {
        "dead-letters": 1,
        "score-changes": 1,
    }
    assert tap.restamped == 1
    assert tap.conflicts == ["score-changes L1:d1"]
