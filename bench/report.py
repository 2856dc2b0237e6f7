"""The printed report: machine, table of absolute figures and ratios, targets met or missed."""

import math

NA = "—"


def _num(value, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if unit == "s":
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:.{digits}f}{(' ' + unit) if unit else ''}"


def ratio(a, b):
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)) or math.isnan(b):
        return None
    return a / b


def _ratio(a, b) -> str:
    r = ratio(a, b)
    return NA if r is None else f"{r:.2f}×"


def table(rows: list, columns: tuple) -> str:
    """Markdown table; rows are tuples of cells (strings)."""
    widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


COLUMNS = ("metric", "swallow-server", "raw mlx-lm", "mlx_lm.server", "swallow / raw", "swallow / mlx_lm.server")


def metric_row(name: str, ours, raw, mlx, unit: str = "", digits: int = 1) -> tuple:
    return (name, _num(ours, unit, digits), _num(raw, unit, digits), _num(mlx, unit, digits),
            _ratio(ours, raw), _ratio(ours, mlx))


def main_rows(r: dict) -> list:
    """r: {"swallow": {...}, "raw": {...}, "mlx": {...}} with decode_tps, streams {n: tps},
    cold_ttft_s, warm_ttft_s, peak_rss_mb."""
    s, w, m = r.get("swallow", {}), r.get("raw", {}), r.get("mlx", {})
    rows = [metric_row("decode, 1 stream (tok/s)", s.get("decode_tps"), w.get("decode_tps"), m.get("decode_tps"))]
    if any("cpu_ms_per_token" in x for x in (s, w, m)):  # the serving process's own, all its threads
        rows.append(metric_row("  server CPU per token (ms)", s.get("cpu_ms_per_token"), w.get("cpu_ms_per_token"),
                               m.get("cpu_ms_per_token"), digits=3))
    if "client_cpu_ms_per_token" in s:  # the streaming client shares this machine's cores; raw has none
        rows.append(("  the HTTP client's CPU per token (ms)", _num(s.get("client_cpu_ms_per_token"), digits=2), NA,
                     _num(m.get("client_cpu_ms_per_token"), digits=2), "", ""))
    for n in sorted(set(s.get("streams", {})) | set(w.get("streams", {})) | set(m.get("streams", {}))):
        rows.append(metric_row(f"aggregate, {n} stream{'s' if n > 1 else ''} (tok/s)", s.get("streams", {}).get(n),
                               w.get("streams", {}).get(n), m.get("streams", {}).get(n)))
        if n > 1:
            rows.append(metric_row(f"  while all {n} decode (tok/s)", s.get("steady", {}).get(n),
                                   w.get("steady", {}).get(n), m.get("steady", {}).get(n)))
        if any(n in x.get("streamcpu", {}) for x in (s, w, m)):
            rows.append(metric_row("  server CPU per token (ms)", s.get("streamcpu", {}).get(n),
                                   w.get("streamcpu", {}).get(n), m.get("streamcpu", {}).get(n), digits=3))
    for n in sorted(s.get("streams", {})):
        if n > 1 and 1 in s.get("streams", {}):
            rows.append(("  scaling " + f"{n} vs 1 stream", *[
                _ratio(x.get("streams", {}).get(n), x.get("streams", {}).get(1)) for x in (s, w, m)], "", ""))
    rows.append(metric_row("TTFT turn 1, cold", s.get("cold_ttft_s"), w.get("cold_ttft_s"), m.get("cold_ttft_s"), "s"))
    rows.append(metric_row("TTFT turn 2, warm", s.get("warm_ttft_s"), w.get("warm_ttft_s"), m.get("warm_ttft_s"), "s"))
    rows.append(("  warm / cold", *[_ratio(x.get("warm_ttft_s"), x.get("cold_ttft_s")) for x in (s, w, m)], "", ""))
    rows.append(metric_row("peak RSS", s.get("peak_rss_mb"), w.get("peak_rss_mb"), m.get("peak_rss_mb"), "MB"))
    return rows


def quant_rows(q: dict, bits) -> list:
    s, f, d, m = q.get("swallow", {}), q.get("raw_float32", {}), q.get("raw_default", {}), q.get("mlx", {})
    return [
        (f"{bits}-bit decode, 1 stream (tok/s); raw = cast to float32", _num(s.get("decode_tps")),
         _num(f.get("decode_tps")), _num(m.get("decode_tps")), _ratio(s.get("decode_tps"), f.get("decode_tps")),
         _ratio(s.get("decode_tps"), m.get("decode_tps"))),
        (f"{bits}-bit decode, 1 stream (tok/s); raw = mlx-lm default", _num(s.get("decode_tps")),
         _num(d.get("decode_tps")), "", _ratio(s.get("decode_tps"), d.get("decode_tps")), ""),
        (f"{bits}-bit peak RSS", _num(s.get("peak_rss_mb"), "MB"), _num(d.get("peak_rss_mb"), "MB"),
         _num(m.get("peak_rss_mb"), "MB"), "", ""),
    ]


def spread(figures: dict, name: str, unit: str = "") -> str:
    """The rounds' values of a figure, lowest to highest: how noisy the machine was."""
    values = [v for v in figures.get("samples", {}).get(name, []) if not math.isnan(v)]
    if len(values) < 2:
        return ""
    return f"{min(values):.{3 if unit == 's' else 1}f}–{max(values):.{3 if unit == 's' else 1}f}{unit}"


def _rounds(pairs: list) -> str:
    parts = [f"{label} {text}" for label, text in pairs if text]
    return f" (rounds: {', '.join(parts)})" if parts else ""


def targets(r: dict, q: dict | None, blas: dict | None, decode_target: float = 0.98) -> list:
    """(target, reached, met?) lines; met is None when it could not be measured. `decode_target`:
    one stream against raw generate_step (0.98 on the bench model, 0.95 on the near-free demo)."""
    s, w, m = r.get("swallow", {}), r.get("raw", {}), r.get("mlx", {})
    out = []

    def check(name, value, ok, text):
        out.append((name, text if value is not None else "not measured", None if value is None else ok))

    x = ratio(s.get("decode_tps"), w.get("decode_tps"))
    check(f"decode ≥ {decode_target}× raw mlx-lm", x, x is not None and x >= decode_target, f"{x:.2f}×" + _rounds(
        [("swallow", spread(s, "decode_tps")), ("raw", spread(w, "decode_tps"))]) if x else "")
    x = ratio(s.get("decode_tps"), m.get("decode_tps"))
    check("decode ≥ mlx_lm.server", x, x is not None and x >= 1.0, f"{x:.2f}×" + _rounds(
        [("swallow", spread(s, "decode_tps")), ("mlx_lm.server", spread(m, "decode_tps"))]) if x else "")
    streams = s.get("streams", {})
    x = ratio(streams.get(8), streams.get(1))
    check("8 streams ≥ 3× one stream", x, x is not None and x >= 3.0, f"{x:.2f}×" + _rounds(
        [("1 stream", spread(s, "streams_1")), ("8 streams", spread(s, "streams_8"))]) if x else "")
    for n in (8, 16):
        x = ratio(streams.get(n), w.get("streams", {}).get(n))
        check(f"{n} streams ≥ 0.97× raw BatchGenerator", x, x is not None and x >= 0.97, f"{x:.3f}×" + _rounds(
            [("swallow", spread(s, f"streams_{n}")), ("raw", spread(w, f"streams_{n}"))]) if x else "")
    x = ratio(s.get("warm_ttft_s"), s.get("cold_ttft_s"))
    check("warm TTFT ≤ 0.1× cold", x, x is not None and x <= 0.1, f"{x:.3f}×" if x else "")
    x = ratio(s.get("warm_ttft_s"), m.get("warm_ttft_s"))
    check("warm TTFT ≤ mlx_lm.server's", x, x is not None and x <= 1.0,
          f"{s.get('warm_ttft_s', 0):.3f} s vs {m.get('warm_ttft_s', 0):.3f} s ({x:.2f}×)" if x else "")
    if q:
        x = ratio(q.get("swallow", {}).get("decode_tps"), q.get("raw_default", {}).get("decode_tps"))
        check("6-bit decode ≥ 3× mlx-lm default", x, x is not None and x >= 3.0, f"{x:.1f}×" if x else "")
    if blas:
        x = ratio(blas.get("with"), blas.get("without"))
        out.append(("OpenBLAS vs reference BLAS, swallow-server 8 streams",
                    f"{_num(blas.get('with'))} vs {_num(blas.get('without'))} tok/s "
                    f"({_ratio(blas.get('with'), blas.get('without'))})"
                    if x else "not measured", None))
    return out


def format_targets(lines: list) -> str:
    mark = {True: "MET", False: "MISSED", None: "info"}
    return "\n".join(f"- [{mark[ok]}] {name}: {text}" for name, text, ok in lines)
