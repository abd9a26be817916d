"""The TensorBoard backend, with the arguments, folder layout and meanings of Composer's ``TensorboardLogger``.

Layout, as Composer writes it (``tensorboard --logdir {log_dir}`` shows one run per folder)::

    {log_dir}/{run name}/events.out.tfevents.*           scalars, text, images
    {log_dir}/{run name}/{run name}/events.out.tfevents.* the HParams session (``add_hparams`` nests it)

What goes where (tags):

- metrics: one scalar per name at the record's step.
- hyperparameters (run config and ``log_hyperparameters``): nested mappings flattened with ``/``. A
  markdown text ``hyperparameters`` as soon as they arrive, and, when the run closes, Composer's
  ``add_hparams`` with the latest ``hparams/<name>`` of every metric whose name holds ``loss`` or
  ``metric`` (Composer does it at each eval end; the bus sees no eval end, and the final values are
  the ones worth comparing across runs).
- images: ``key`` (one image) or ``key/<i>`` (several); each mask as an overlay ``.../<mask name>``,
  boxes drawn on a copy ``.../boxes``.
- tables: a markdown text ``key`` and one image grid ``key/images`` (a grid row per table row, a
  grid column per image column plus one per mask and boxes overlay).

``torch`` and ``tensorboard`` are imported when a run starts: ``logbus plugins`` imports every plugin
module and must stay light.
"""

from __future__ import annotations

import html
import io
import json
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

import logbus
from logbus.files import safe_filename
from logbus.options import Option, Options
from logbus.plugins._backend_common import fallback_run_started, logs_on_this_rank, rank_run_name
from logbus.records import Hyperparameters, Image, Images, Metrics, RunFinished, RunStarted, Table, as_float

if TYPE_CHECKING:  # imported when the run starts: logbus.plugins loads without torch
    from torch.utils.tensorboard import SummaryWriter

DEFAULT_LOG_DIR = "tensorboard_logs"
# TensorBoard's image dashboard serves the stored bytes as they are: files in these formats are
# referenced without a decode and re-encode; others are decoded and stored as PNG.
_BROWSER_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP"})
_BOXES = "boxes"
# Distinct colours for class ids (matplotlib's tab10 then the light half of tab20). Class 0 of a mask
# is painted black, so the overlay dims the background and tints every other class.
_CLASS_COLORS = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229)], dtype=np.uint8)
_GRID_GAP = 2  # white pixels between grid tiles, so neighbouring images stay apart


class TensorBoardBackend:
    """Writes one TensorBoard run per process (or one per rank with ``rank_zero_only=False``).

    :param log_dir: the folder to point ``tensorboard --logdir`` at; the run goes to
        ``{log_dir}/{run name}``. Default ``./tensorboard_logs``, as Composer. A run name used again
        (Composer's autoresume keeps it) continues in the same folder, so the curves carry on.
    :param flush_interval: flush the event file every this many steps (Composer: batches), so a live
        TensorBoard sees the data; step-less metrics count one step each. Also flushed on
        ``bus.flush()``/``run.flush()`` and at the end.
    :param rank_zero_only: only rank 0 writes (Composer's default). With ``False`` every rank writes
        ``{run name}-rank{rank}`` when the world has more than one rank.
    :param table_image_rows: how many table rows the ``key/images`` grid shows (the text shows all);
        a 10,000-row table of images would otherwise make one image of gigapixels.
    """

    name = "tensorboard"
    supports = frozenset({Table, Images})
    # Table images are drawn into grids from their pixels (a file would only be decoded again).
    needs_image_files = False
    options = Options(
        Option("log_dir", None, "the folder to point `tensorboard --logdir` at; the run goes to `<log_dir>/<run name>`; "
               "`None`: `./tensorboard_logs`, as Composer", kind="path"),
        Option("flush_interval", 100, "flush the event file every this many steps, so a live TensorBoard sees the data",
               kind="int", minimum=1),
        Option("rank_zero_only", True, "log on rank 0 only; `False`: every rank writes `<run name>-rank<rank>`"),
        Option("table_image_rows", 100, "how many rows of a table the `<key>/images` grid shows (the text shows them "
               "all)", kind="int", minimum=1),
    )

    # (defaults are read from the class body's `options` while the class is being made)
    def __init__(self, log_dir: str | os.PathLike | None = options.defaults["log_dir"],
                 flush_interval: int = options.defaults["flush_interval"],
                 rank_zero_only: bool = options.defaults["rank_zero_only"], *,
                 table_image_rows: int = options.defaults["table_image_rows"]):
        self.options.check(log_dir=log_dir, flush_interval=flush_interval, table_image_rows=table_image_rows)
        self.log_dir = os.fspath(log_dir) if log_dir is not None else DEFAULT_LOG_DIR
        self.flush_interval = flush_interval
        self.rank_zero_only = bool(rank_zero_only)
        self.table_image_rows = table_image_rows
        self.run_name: str | None = None
        self.run_dir: str | None = None
        self.writer: SummaryWriter | None = None  # once the run started on a logging rank
        self._started = False
        self._hparams: dict[str, Any] = {}
        self._hparam_metrics: dict[str, float] = {}
        self._next_step = 0
        self._flushed_block = 0

    # -- records ---------------------------------------------------------------------------------
    def log(self, record) -> None:
        if isinstance(record, RunStarted):
            self._start(record)
            return
        if not self._started:  # a plain caller that skipped RunStarted still gets a run
            self._start(fallback_run_started())
        if self.writer is None:
            return  # not the logging rank
        if isinstance(record, Metrics):
            self._log_metrics(record)
        elif isinstance(record, Hyperparameters):
            self._hparams.update(_flatten(record.values))
            self._log_hparams_text()
        elif isinstance(record, Images):
            step = self._media_step(record.step)
            for index, image in enumerate(record.images):
                tag = record.key if len(record.images) == 1 else f"{record.key}/{index}"
                self._log_image(tag, image, step)
        elif isinstance(record, Table):
            self._log_table(record)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self, finish: RunFinished) -> None:
        if self.writer is None:
            return
        try:
            if self._hparams:
                # Composer's call: the HParams session lands in {run}/{run} with hparams/<metric> scalars.
                self.writer.add_hparams(hparam_dict=self._hparams,
                                        metric_dict={f"hparams/{name}": value
                                                     for name, value in self._hparam_metrics.items()},
                                        run_name=os.path.basename(self.writer.get_logdir()))
        finally:
            self.writer.flush()
            self.writer.close()
            self.writer = None

    @property
    def _live_writer(self) -> SummaryWriter:
        # The writers below run only once log() has checked that this rank has a writer.
        assert self.writer is not None
        return self.writer

    # -- run lifecycle ---------------------------------------------------------------------------
    def _start(self, record: RunStarted) -> None:
        self._started = True
        if not logs_on_this_rank(record, self.rank_zero_only):
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_name = record.run_name
        self.run_dir = os.path.join(self.log_dir, safe_filename(rank_run_name(record.run_name, record, self.rank_zero_only)))
        # Composer sets flush_secs to a year because it uploads the event file it flushes; nothing
        # uploads here, so SummaryWriter's own flush every 120 s is kept as a backstop for slow steps.
        self.writer = SummaryWriter(log_dir=self.run_dir)
        self._hparams = _flatten(record.config)
        if self._hparams:
            self._log_hparams_text()

    # -- steps -----------------------------------------------------------------------------------
    def _metrics_step(self, step: int | None) -> int:
        # TensorBoard plots every point at a step: step-less metrics count up from the last step, as
        # a step-less wandb.log does.
        step = self._next_step if step is None else step
        self._next_step = step + 1
        return step

    def _media_step(self, step: int | None) -> int:
        # Step-less media go with the latest metrics, i.e. the step being trained.
        return max(self._next_step - 1, 0) if step is None else step

    # -- writers ---------------------------------------------------------------------------------
    def _log_metrics(self, record: Metrics) -> None:
        step = self._metrics_step(record.step)
        for name, value in record.values.items():
            value = as_float(value)
            self._live_writer.add_scalar(name, value, global_step=step)
            if "loss" in name or "metric" in name:  # the metrics Composer pairs with hparams
                self._hparam_metrics[name] = value
        # Composer flushes when batch % flush_interval == 0: here, when the step enters a new block of
        # flush_interval steps (a step that goes back, a new phase, starts a block too).
        block = step // self.flush_interval
        if block != self._flushed_block:
            self._flushed_block = block
            self._live_writer.flush()

    def _log_hparams_text(self) -> None:
        rows = [[name, value] for name, value in self._hparams.items()]
        self._live_writer.add_text("hyperparameters", _markdown_table(["name", "value"], rows),
                                   global_step=self._media_step(None))

    def _log_image(self, tag: str, image: Image, step: int) -> None:
        if image.path is not None:
            self._log_encoded(tag, image.path, step)
        else:
            self._live_writer.add_image(tag, image.pixels, global_step=step, dataformats="HWC")
        for suffix, pixels in _overlays(image).items():
            self._live_writer.add_image(f"{tag}/{suffix}", pixels, global_step=step, dataformats="HWC")

    def _log_encoded(self, tag: str, path: str, step: int) -> None:
        from PIL import Image as PILImage
        from tensorboard.compat.proto.summary_pb2 import Summary

        with open(path, "rb") as file:  # read once: the header and the bytes stored are the same file's
            encoded = file.read()
        with PILImage.open(io.BytesIO(encoded)) as opened:  # parses the header only
            image_format, (width, height), bands = opened.format, opened.size, len(opened.getbands())
            if image_format not in _BROWSER_FORMATS:
                rgb = np.asarray(opened.convert("RGB"))
                self._live_writer.add_image(tag, rgb, global_step=step, dataformats="HWC")
                return
        # The summary add_image writes, with the file's own bytes: no second encode.
        image = Summary.Image(height=height, width=width, colorspace=min(bands, 4), encoded_image_string=encoded)
        file_writer = self._live_writer.file_writer
        assert file_writer is not None  # SummaryWriter makes it in its constructor
        file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def _log_table(self, record: Table) -> None:
        step = self._media_step(record.step)
        shown = record.rows[:self.table_image_rows]
        grid = _image_grid(record.columns, shown)
        text = _markdown_table(record.columns, record.rows)
        if grid is not None and len(shown) < len(record.rows):
            text += f"\n\nThe image grid `{record.key}/images` shows the first {len(shown)} of {len(record.rows)} rows."
        self._live_writer.add_text(record.key, text, global_step=step)
        if grid is not None:
            self._live_writer.add_image(f"{record.key}/images", grid, global_step=step, dataformats="HWC")


# -- hyperparameters -------------------------------------------------------------------------------
def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer/lr": 0.1}``: the HParams dashboard takes only
    bool, number and str values, one column each."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = _hparam_value(value)
    return flat


def _hparam_value(value: Any) -> Any:
    # Numbers stay numbers (Composer formats everything to strings, which the HParams dashboard can
    # then only sort as text); anything else becomes readable text.
    if hasattr(value, "tolist"):  # numpy values and tensors; one element is a number, as in Composer
        value = value.tolist()
        while isinstance(value, list) and len(value) == 1:
            value = value[0]
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "None"
    return json.dumps(value, default=str)


# -- text ------------------------------------------------------------------------------------------
def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table, as TensorBoard's text dashboard renders it (its sanitiser shows stray HTML
    as text, so ``<``/``>``/``&`` are escaped to render as themselves)."""
    if not columns:
        return f"(a table without columns, {len(rows)} rows)"
    lines = ["| " + " | ".join(_cell_text(column) for column in columns) + " |",
             "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell_text(cell: Any) -> str:
    if isinstance(cell, Image):
        text = "[image]" if cell.caption is None else f"[image: {cell.caption}]"
    elif cell is None:
        text = ""
    else:
        text = str(cell)
    text = html.escape(text, quote=False).replace("\\", "\\\\").replace("|", "\\|")
    # A newline would end the table row; <br> is one of the tags the text dashboard keeps.
    return text.replace("\r\n", "<br>").replace("\n", "<br>").replace("\r", "<br>")


# -- pixels ----------------------------------------------------------------------------------------
def _decode_rgb(path: str) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(path) as opened:
        return np.asarray(opened.convert("RGB"))


def _rgb(image: Image) -> np.ndarray:
    if image.path is not None:
        return _decode_rgb(image.path)
    pixels = image.pixels
    assert pixels is not None  # an Image holds pixels or a path (records.Image checks it)
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3]  # overlays and grids drop alpha: TensorBoard shows it against white anyway


def _class_colors(class_ids: np.ndarray) -> np.ndarray:
    return _CLASS_COLORS[class_ids % len(_CLASS_COLORS)]


def _overlays(image: Image, base: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Each mask blended half and half over the image, and the boxes drawn on a copy."""
    if not image.masks and not image.boxes:
        return {}
    base = _rgb(image) if base is None else base
    views: dict[str, np.ndarray] = {}
    for name, mask in image.masks.items():
        colors = _class_colors(mask.data)
        colors[mask.data == 0] = 0
        if mask.data.shape != base.shape[:2]:  # an encoded image of another size: show the mask alone
            views[name] = colors
        else:
            views[name] = ((base.astype(np.uint16) + colors) // 2).astype(np.uint8)
    if image.boxes:
        from PIL import Image as PILImage
        from PIL import ImageDraw

        canvas = PILImage.fromarray(np.ascontiguousarray(base))
        draw = ImageDraw.Draw(canvas)
        width = max(1, min(base.shape[:2]) // 100)
        for box in image.boxes:
            color = tuple(int(c) for c in _class_colors(np.array(box.class_id)))
            draw.rectangle([float(box.min_x), float(box.min_y), float(box.max_x), float(box.max_y)],
                           outline=color, width=width)
        views[_BOXES] = np.asarray(canvas)
    return views


def _image_grid(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> np.ndarray | None:
    """The image cells of ``rows`` as one RGB image: a grid row per table row; per image column, the
    image then its overlays. Tiles are padded to the largest; empty cells stay black."""
    views_per_column: dict[int, list[str | None]] = {}
    for index in range(len(columns)):
        cells = [row[index] for row in rows if isinstance(row[index], Image)]
        if cells:
            overlay_names = dict.fromkeys(name for cell in cells for name in cell.masks)
            views_per_column[index] = [None, *overlay_names, *([_BOXES] if any(cell.boxes for cell in cells) else [])]
    if not views_per_column:
        return None
    tiles: list[list[np.ndarray | None]] = []
    for row in rows:
        tile_row: list[np.ndarray | None] = []
        for index, views in views_per_column.items():
            cell = row[index]
            if not isinstance(cell, Image):
                tile_row += [None] * len(views)
                continue
            base = _rgb(cell)
            overlays = _overlays(cell, base)
            tile_row += [base if view is None else overlays.get(view) for view in views]
        tiles.append(tile_row)
    present = [tile for tile_row in tiles for tile in tile_row if tile is not None]
    height, width = max(tile.shape[0] for tile in present), max(tile.shape[1] for tile in present)
    grid = np.full((len(tiles) * (height + _GRID_GAP) - _GRID_GAP,
                    len(tiles[0]) * (width + _GRID_GAP) - _GRID_GAP, 3), 255, dtype=np.uint8)
    for r, tile_row in enumerate(tiles):
        for c, tile in enumerate(tile_row):
            top, left = r * (height + _GRID_GAP), c * (width + _GRID_GAP)
            grid[top:top + height, left:left + width] = 0
            if tile is not None:
                grid[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return grid


@logbus.hookimpl
def register_backends(register):
    register("tensorboard", TensorBoardBackend,
             description="TensorBoard event files (scalars, hparams, images, tables as text), Composer's arguments")
