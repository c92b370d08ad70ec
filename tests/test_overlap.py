"""The pipelined batch: reading ahead and writing behind on their own threads, in order, bounded, and a batch that
behaves as a one-thread batch does (results, order, errors, a full disk, a stop, memory)."""

from __future__ import annotations

import errno
import threading
import time
import tracemalloc
from dataclasses import replace

import cv2
import numpy as np
import pytest
import skimage.data

import restorecli.pipeline.batch as pipeline_batch
import restorecli.pipeline.runner as pipeline
from helpers.wait import wait_until
from restorecli.images import encode_image
from restorecli.pipeline.overlap import Feed, Halted, ReadAhead, WriteBehind
from restorecli.pipeline import Restorer, RestoreOptions, restore_batch

WAIT = 30.0  # seconds a test waits for the other thread before it counts as never coming


class ListWriter:
    """A strip writer that records its rows to the handle as text, for checking order and completeness."""

    def __init__(self, handle, gate: threading.Event | None = None, fail_on: int | None = None):
        self.handle, self.gate, self.fail_on, self.count = handle, gate, fail_on, 0

    def write(self, rows):
        if self.gate is not None:
            assert self.gate.wait(WAIT)
        self.count += 1
        if self.fail_on == self.count:
            raise ValueError("the encoder failed")
        self.handle.write(b"%d," % int(rows[0, 0, 0]))

    def restart(self):
        self.handle.seek(0)
        self.handle.truncate()

    def close(self):
        self.handle.write(b"end")


def rows(value: int, height: int = 2) -> np.ndarray:
    return np.full((height, 4, 3), value, np.uint8)


# ------------------------------------------------------------------ WriteBehind


def test_strips_are_written_in_order_and_the_file_appears_only_when_finished(tmp_path):
    gate = threading.Event()
    with WriteBehind() as behind:
        out = behind.strips(tmp_path / "a.txt", lambda handle: ListWriter(handle, gate))
        buffer = rows(1)
        for value in (1, 2, 3):
            buffer[:] = value  # the engine reuses its buffer: what was queued must be a copy
            out.write(buffer)
        future = out.finish()
        assert not (tmp_path / "a.txt").exists() and not future.done()
        gate.set()
        assert future.result(WAIT) > 0
    assert (tmp_path / "a.txt").read_bytes() == b"1,2,3,end"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left


def test_an_aborted_output_leaves_nothing_and_the_next_is_written(tmp_path):
    with WriteBehind() as behind:
        first = behind.strips(tmp_path / "a.txt", ListWriter)
        first.write(rows(1))
        first.abort()
        second = behind.strips(tmp_path / "b.txt", ListWriter)
        second.write(rows(2))
        second.finish().result(WAIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_a_failing_output_fails_alone_and_tells_the_producer(tmp_path):
    with WriteBehind() as behind:
        bad = behind.strips(tmp_path / "bad.txt", lambda handle: ListWriter(handle, fail_on=1))
        bad.write(rows(1))
        with pytest.raises(ValueError, match="encoder failed"):
            bad.finish().result(WAIT)
        with pytest.raises(ValueError, match="encoder failed"):  # the model's next strip learns it at once
            bad.write(rows(2))
        good = behind.strips(tmp_path / "good.txt", ListWriter)
        good.write(rows(3))
        good.finish().result(WAIT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt"]


def test_a_full_disk_stops_the_writer_for_every_later_output(tmp_path):
    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with WriteBehind(stops=lambda exc: isinstance(exc, OSError) and exc.errno == errno.ENOSPC) as behind:
        first = behind.strips(tmp_path / "a.txt", full)
        with pytest.raises(OSError, match="No space"):
            first.finish().result(WAIT)
        assert behind.stopped is not None
        later = behind.strips(tmp_path / "b.txt", ListWriter)
        with pytest.raises(Halted):  # the model stops on the image in hand
            later.write(rows(1))
        with pytest.raises(Halted):
            behind.file(tmp_path / "c.txt", lambda: b"data", 4).result(WAIT)
    assert list(tmp_path.iterdir()) == []


def test_whole_files_are_written_in_order_with_the_strips(tmp_path):
    order = []
    with WriteBehind() as behind:
        behind.file(tmp_path / "a.txt", lambda: order.append("a") or b"a", 1)
        strips = behind.strips(tmp_path / "b.txt", ListWriter)
        strips.write(rows(1))
        strips.finish(then=lambda: order.append("b"))
        behind.file(tmp_path / "c.txt", lambda: order.append("c") or b"c", 1)
    assert order == ["a", "b", "c"]
    assert (tmp_path / "b.txt").read_bytes() == b"1,end"


def test_the_queue_holds_at_most_its_budget_and_the_producer_waits(tmp_path):
    """A writer slower than the model makes the model wait: the queued rows never pass the budget (a single piece
    larger than it waits for an empty queue)."""
    gate = threading.Event()
    piece = rows(1, height=100)  # 1200 bytes
    with WriteBehind(budget=3 * piece.nbytes) as behind:
        out = behind.strips(tmp_path / "a.txt", lambda handle: ListWriter(handle, gate))
        sent = []

        def produce():
            for value in range(8):
                out.write(rows(value, height=100))
                sent.append(value)

        producer = threading.Thread(target=produce)
        producer.start()
        # the producer runs ahead as far as the budget lets it (3 pieces, the one in the writer's hands counted)
        wait_until(lambda: len(sent) >= 3, "the producer to fill the budget", WAIT)
        time.sleep(0.3)  # the wait under test: given the time, the producer goes no further
        assert len(sent) <= 4 and behind._queued <= 3 * piece.nbytes  # whichever way the piece in hand counts
        gate.set()
        producer.join(WAIT)
        out.finish().result(WAIT)
    assert sent == list(range(8))


# ------------------------------------------------------------------ ReadAhead


def test_read_ahead_prepares_one_item_ahead_in_order():
    started, events = [], []
    release = {i: threading.Event() for i in range(3)}

    def prepare(i):
        events.append(("prepare", i))
        assert release[i].wait(WAIT)
        return i * 10

    release[0].set()
    with ReadAhead([0, 1, 2], prepare, on_start=started.append) as ahead:
        items = iter(ahead)
        assert next(items) == 0
        # item 1 is being read while the caller works on item 0
        wait_until(lambda: ("prepare", 1) in events, "item 1 to be read ahead", WAIT)
        assert ("prepare", 2) not in events and started == [0, 1]  # no more than one ahead
        release[1].set()
        assert next(items) == 10
        release[2].set()
        assert next(items) == 20
        assert next(items, "none left") == "none left"
    assert started == [0, 1, 2]


def test_read_ahead_raises_an_items_error_at_its_turn():
    def prepare(i):
        if i == 1:
            raise RuntimeError("item 1 is bad")
        return i

    with ReadAhead([0, 1, 2], prepare) as ahead:
        items = iter(ahead)
        assert next(items) == 0
        with pytest.raises(RuntimeError, match="item 1"):
            next(items)


def test_read_ahead_over_a_feed_waits_for_items_on_its_thread_and_ends_when_the_feed_is_closed():
    """A feed's items come as other threads put them (a Ray actor's calls): the reader thread waits for the next,
    never the caller, which takes each prepared in the order put; closing the feed ends the items."""
    feed: Feed[int] = Feed()
    began, threads = [], set()

    def prepare(i):
        threads.add(threading.current_thread().name)
        return i * 10

    with ReadAhead(feed, prepare, on_start=began.append) as ahead:
        taking = iter(ahead)
        feed.put(1)
        assert next(taking) == 10  # the caller has item 1 while the reader waits for item 2, which has not come
        assert began == [1]
        feed.put(2)
        feed.put(3)
        assert next(taking) == 20 and next(taking) == 30
        feed.close()
        assert list(taking) == []
    assert began == [1, 2, 3] and threads == {"restorecli-read"}


def test_leaving_a_read_ahead_over_a_feed_nobody_closed_does_not_wait_for_an_item_that_never_comes():
    feed: Feed[int] = Feed()
    left, taken = threading.Event(), []

    def run() -> None:
        with ReadAhead(feed, lambda i: i) as ahead:
            feed.put(1)
            taken.append(next(iter(ahead)))  # the reader now waits for item 2, which never comes
        left.set()  # leaving closed the feed, which ended the reader's wait

    threading.Thread(target=run, daemon=True).start()
    assert left.wait(WAIT) and taken == [1]


def test_write_behind_hands_back_what_it_encoded_in_the_order_given():
    """``encoded``: the bytes for a caller to send on (the Ray actor's reply), encoded on the writer thread in turn
    with the outputs before it; an encoder's error is its own output's."""
    order = []

    def encode(name: str):
        def run() -> bytes:
            order.append((name, threading.current_thread().name))
            if name == "bad":
                raise ValueError("the encoder failed")
            return name.encode()

        return run

    with WriteBehind() as behind:
        futures = [behind.encoded(encode(name), 10) for name in ("a", "bad", "c")]
        assert futures[0].result(WAIT) == b"a" and futures[2].result(WAIT) == b"c"
        with pytest.raises(ValueError, match="encoder failed"):
            futures[1].result(WAIT)
    assert order == [("a", "restorecli-write"), ("bad", "restorecli-write"), ("c", "restorecli-write")]


# ------------------------------------------------------------------ the batch


def _photos(folder, count: int, side: int = 96):
    folder.mkdir(parents=True, exist_ok=True)
    photo = skimage.data.astronaut()
    paths = []
    for i in range(count):
        path = folder / f"p{i}.png"
        y = 40 * i
        cv2.imwrite(str(path), cv2.cvtColor(photo[y : y + side, y : y + side], cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_the_next_image_is_decoded_while_the_model_runs(tmp_path, make_model, monkeypatch):
    """Image 1's model waits until image 2's decoding has begun on the reader thread: without reading ahead it
    would wait in vain."""
    inputs = _photos(tmp_path / "in", 2)
    decoding, threads = threading.Event(), {}
    real_decode, real_rows = pipeline.decode_image, pipeline.enhance_rows

    def decode(data, name, max_pixels):
        threads[name] = threading.current_thread().name
        if name.endswith("p1.png"):
            decoding.set()
        return real_decode(data, name, max_pixels)

    def model_waits(model, color, options, sink, *args):
        if not decoding.is_set():
            assert decoding.wait(WAIT), "image 2 was not read while image 1 ran"
        return real_rows(model, color, options, sink, *args)

    monkeypatch.setattr(pipeline, "decode_image", decode)
    monkeypatch.setattr(pipeline, "enhance_rows", model_waits)
    batch = restore_batch([str(p) for p in inputs], RestoreOptions(model=str(make_model(2)), device="cpu",
                                                                   output_dir=str(tmp_path / "out")))
    assert [i.status for i in batch.items] == ["ok", "ok"]
    assert all(name.startswith("restorecli-read") for name in threads.values())


def test_the_last_image_is_written_while_the_model_runs_the_next(tmp_path, make_model, monkeypatch):
    """Image 1's file is finished only once image 2's model has begun: the writer thread holds image 1 while the
    model goes on. Results still come in order, each once its file is in place."""
    inputs = _photos(tmp_path / "in", 2)
    second_model = threading.Event()
    real_rows, real_writer = pipeline.enhance_rows, pipeline_batch.strip_writer
    seen = []

    def model(model, color, options, sink, *args):
        if len(seen) == 1:
            second_model.set()
        seen.append(color.shape)
        return real_rows(model, color, options, sink, *args)

    def writer(fmt, handle, *args, **kwargs):
        inner = real_writer(fmt, handle, *args, **kwargs)
        if not seen[1:]:  # the first image's writer: it closes only while the second image is in the model
            real_close = inner.close

            def close():
                assert second_model.wait(WAIT), "image 1 was written before image 2's model began"
                real_close()

            inner.close = close
        return inner

    monkeypatch.setattr(pipeline, "enhance_rows", model)
    monkeypatch.setattr(pipeline_batch, "strip_writer", writer)
    events = []
    batch = restore_batch([str(p) for p in inputs], RestoreOptions(model=str(make_model(2)), device="cpu",
                                                                   output_dir=str(tmp_path / "out")),
                          on_progress=lambda event, payload: events.append((event, payload)))
    assert [i.status for i in batch.items] == ["ok", "ok"]
    done = [payload.input for event, payload in events if event == "done"]
    assert done == [str(p) for p in inputs]
    for event, payload in events:  # each result says done only once its file is complete
        if event == "done":
            assert (tmp_path / "out" / f"{inputs[done.index(payload.input)].stem}.png").exists()


def test_pipelined_outputs_equal_one_image_at_a_time(tmp_path, make_model):
    """The same bytes as restoring each image alone, for PNG (streamed), JPEG and a grey+alpha 16-bit TIFF (the
    whole-image path), with faces of none."""
    inputs = _photos(tmp_path / "in", 3)
    grey = tmp_path / "in" / "grey16a.png"  # written to TIFF as RGB+alpha: the whole-image path
    plane = np.ascontiguousarray(skimage.data.camera()[:64, :80, None].astype(np.uint16) * 257)
    grey.write_bytes(encode_image(plane, np.full(plane.shape[:2], 40000, np.uint16), "png"))
    model = str(make_model(2))
    for fmt in ("png", "jpg", "tiff"):
        options = RestoreOptions(model=model, device="cpu", output_dir=str(tmp_path / fmt), format=fmt)
        batch = restore_batch([str(p) for p in [*inputs, grey]], options)
        assert [i.status for i in batch.items] == ["ok"] * 4, batch.items
        restorer = Restorer.from_options(options)
        for item in batch.items:
            alone = restorer.restore_bytes((tmp_path / "in" / item.input.split("/")[-1]).read_bytes(), item.input,
                                           options, fmt).data
            assert open(item.output, "rb").read() == alone, item.output


def test_a_bad_image_among_good_ones_fails_alone_in_order(tmp_path, make_model):
    inputs = _photos(tmp_path / "in", 3)
    inputs[1].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    batch = restore_batch([str(p) for p in inputs], RestoreOptions(model=str(make_model(2)), device="cpu",
                                                                   output_dir=str(tmp_path / "out")))
    assert [(i.input, i.status) for i in batch.items] == [(str(inputs[0]), "ok"), (str(inputs[1]), "error"),
                                                          (str(inputs[2]), "ok")]
    assert str(inputs[1]) in batch.items[1].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png", "p2.png"]


def test_a_full_disk_behind_the_model_cuts_the_next_image_short(tmp_path, make_model, monkeypatch):
    """Image 1's file fails on a full disk while image 2 is in the model: image 2 stops at its next tile, leaves
    no file, and the batch ends with image 1's error, as a one-thread batch ends."""
    inputs = _photos(tmp_path / "in", 3, side=128)
    real_writer, tiles_after = pipeline_batch.strip_writer, []
    failed = threading.Event()

    def writer(fmt, handle, *args, **kwargs):
        inner = real_writer(fmt, handle, *args, **kwargs)
        if not failed.is_set():
            def close():
                failed.set()
                raise OSError(errno.ENOSPC, "No space left on device")

            inner.close = close
        return inner

    def on_progress(event, payload):
        if event == "tiles" and failed.is_set():
            tiles_after.append(payload)

    monkeypatch.setattr(pipeline_batch, "strip_writer", writer)
    batch = restore_batch([str(p) for p in inputs], RestoreOptions(model=str(make_model(2)), device="cpu", tile=32,
                                                                   output_dir=str(tmp_path / "out")),
                          on_progress=on_progress)
    assert [i.status for i in batch.items] == ["error"] and batch.halted.startswith("No space left on device")
    assert list((tmp_path / "out").iterdir()) == []  # neither file, nor a temporary one
    assert len(tiles_after) < 16  # image 2 (16 tiles) did not run to its end


def test_a_stop_while_the_model_runs_keeps_what_was_finished(tmp_path, make_model, monkeypatch):
    """Ctrl-C in image 2's model while image 1 is still being written: image 1 is finished and reported, image 2
    leaves nothing, image 3 is not begun."""
    inputs = _photos(tmp_path / "in", 3)
    real_rows, real_writer = pipeline.enhance_rows, pipeline_batch.strip_writer
    seen, interrupted = [], threading.Event()

    def model(model, color, options, sink, *args):
        seen.append(color.shape)
        if len(seen) == 2:
            sink.write(np.zeros((2, color.shape[1] * 2, 3), np.uint8))
            interrupted.set()
            raise KeyboardInterrupt
        return real_rows(model, color, options, sink, *args)

    def writer(fmt, handle, *args, **kwargs):
        inner = real_writer(fmt, handle, *args, **kwargs)
        if len(seen) <= 1:
            real_close = inner.close

            def close():  # image 1's file is still being written when the interrupt comes
                assert interrupted.wait(WAIT)
                real_close()

            inner.close = close
        return inner

    monkeypatch.setattr(pipeline, "enhance_rows", model)
    monkeypatch.setattr(pipeline_batch, "strip_writer", writer)
    done = []
    with pytest.raises(KeyboardInterrupt):
        restore_batch([str(p) for p in inputs], RestoreOptions(model=str(make_model(2)), device="cpu",
                                                               output_dir=str(tmp_path / "out")),
                      on_progress=lambda event, payload: event == "done" and done.append(payload))
    assert [(d.input, d.status) for d in done] == [(str(inputs[0]), "ok")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p0.png"]
    assert len(seen) == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("restorecli-")]  # no thread outlives it


def test_the_batch_holds_no_more_images_however_long_it_is(tmp_path, make_model):
    """Host memory of a batch (numpy's allocations, traced) peaks the same for 6 images as for 2: one read ahead,
    one in the model, one being written, whatever comes after."""
    inputs = _photos(tmp_path / "in", 6, side=160)
    options = RestoreOptions(model=str(make_model(2)), device="cpu", output_dir=str(tmp_path / "o"), tile=64)
    restorer = Restorer.from_options(options)
    peaks = {}
    for count in (2, 6):
        out = tmp_path / f"out{count}"
        tracemalloc.start()
        restore_batch([str(p) for p in inputs[:count]], replace(options, output_dir=str(out)), restorer=restorer)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(list(out.iterdir())) == count
    assert peaks[6] < peaks[2] * 1.3, peaks


def test_an_item_s_clock_counts_its_own_work_and_starts_where_an_unpaused_one_would_have(monkeypatch):
    """The one clock of an item's seconds (a batch's image read ahead, an actor's call): paused while it waits,
    running while it is worked on, and ``started`` is now less what it counted, where a result counts from."""
    from restorecli.pipeline.flow import Clock

    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    clock = Clock()
    now[0] = 101.5  # read and prepared: 1.5 s of its own
    clock.pause()
    now[0] = 104.0  # waited 2.5 s for the image before it
    assert clock.seconds == 1.5
    clock.resume()
    assert clock.started == 102.5  # as if it had begun 1.5 s ago, without the wait
    now[0] = 105.0
    assert (clock.seconds, clock.started) == (2.5, 102.5)
    with clock.running():  # running for the block (it was already), paused after it
        now[0] = 105.5
    now[0] = 107.0
    assert clock.seconds == 3.0 and Clock(running=False).seconds == 0.0
