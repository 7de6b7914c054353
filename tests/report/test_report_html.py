"""`build_report`: the report directory, the HTML page (static checks and headless Chromium) and the CLI."""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synthetic_run

from mmunlearn.errors import DataError, MMUnlearnError
from mmunlearn.report import build, build_report, report_commands
from mmunlearn.report.compare import compare_runs

synthetic = synthetic_run
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One built report shared by the read-only tests of this module (building is the slow part)."""
    run = synthetic.make_run(tmp_path_factory.mktemp("html") / "run")
    return build_report(run)


def test_report_directory_layout(built: Path) -> None:
    report = built.parent
    assert built == report / "index.html" and report.name == "report"
    tables = sorted(p.name for p in (report / "tables").iterdir())
    for stem in ("unlok_attack_success", "unlok_effects", "safety_asr_keyword", "safety_asr_oracle",
                 "safety_utility", "safety_compute"):
        assert {f"{stem}.md", f"{stem}.csv", f"{stem}.tex"} <= set(tables)
    plots = sorted(p.name for p in (report / "plots").iterdir())
    assert plots == ["safety_asr.png", "unlok_attack_success.png", "unlok_logit_lens.png", "unlok_tradeoff.png"]
    assert len(list((report / "images" / "unlok").iterdir())) == 21  # 3 facts x (original + 3 + 3 tiers)
    assert len(list((report / "images" / "safety").iterdir())) == 3
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".report.")]  # no temp dir left


def test_html_is_self_contained(built: Path) -> None:
    page = built.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs, "no references found"
    for ref in refs:
        assert not re.match(r"^(https?:)?//", ref), f"external reference {ref}"
        if ref.startswith(("#", "data:")):
            continue
        assert (built.parent / ref).is_file(), f"missing file {ref}"
    assert "<link rel=\"stylesheet\"" not in page and "<script src" not in page


def test_html_content_and_escaping(built: Path) -> None:
    page = built.read_text(encoding="utf-8")
    assert 'id="table-unlok_attack_success"' in page and "1.00 [1.00, 1.00]" in page
    assert 'id="fact-f1"' in page and "What colour is creature 0&#39;s tail?" in page
    assert 'data-defense="head_projection" data-attack="hp"' in page
    assert 'id="prompt-p1"' in page and "keyword: harmful" in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page  # model output shown, not run
    assert "<script>alert" not in page
    assert "abc1234" in page  # provenance: git commit
    fact = page[page.index('id="fact-f1"'):page.index('id="fact-f2"')]
    order = ["fact", "paraphrase/0", "image/easy", "image/medium", "image/hard", "neighbour_question/0",
             "neighbour_image/easy", "neighbour_image/medium", "neighbour_image/hard"]
    positions = [fact.index(f"<code>{name}</code>") for name in order]
    assert positions == sorted(positions)  # reading order, though the rows store probes sorted by name


def test_browser_shows_each_runs_responses_at_its_checkpoints(tmp_path: Path) -> None:
    """With `safety.eval_steps`, a run's response after each evaluated step follows its final one, with the
    judges' verdicts; the base model has no checkpoints, and the escaping holds there too."""
    page = build_report(synthetic.add_checkpoints(synthetic.make_run(tmp_path / "run"))).read_text(encoding="utf-8")
    request = page[page.index('id="prompt-p1"'):page.index('id="prompt-p2"')]
    text_only = request[request.index("suite <code>text_only</code>"):request.index("suite <code>figstep</code>")]
    final = text_only.index('<td>unlearn_mm</td>')
    at_10 = text_only.index('data-run="unlearn_mm" data-step="10"')
    assert final < at_10 and text_only.count('data-step="10"') == 1
    row = text_only[at_10:text_only.index("</tr>", at_10)]
    # at step 10 the run still gave the base model's response (a script, shown as text) and verdicts
    assert "unlearn_mm <span class=\"note\">at step 10</span>" in row
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; step 1 (at step 10)" in row
    assert "keyword: harmful" in row and "oracle: harmful" in row
    assert 'data-run="base" data-step' not in page and "after training steps\n    10 (" in page
    assert "<script>alert" not in page


def test_a_run_stopped_at_a_checkpoint_shows_that_step_once(tmp_path: Path) -> None:
    """Early stopping at step 10 makes the step-10 evaluation the run's final one, in samples.jsonl: the browser
    and the comparison do not show it again as a checkpoint."""
    run = synthetic.add_checkpoints(synthetic.make_run(tmp_path / "run"))
    path = run / "safety" / "summary.json"
    summary = json.loads(path.read_text())
    summary["compute"]["unlearn_mm"]["steps"] = 10
    path.write_text(json.dumps(summary))
    page = build_report(run).read_text(encoding="utf-8")
    assert 'data-step="10"' not in page and "(at step 10)" not in page
    assert "over training" not in compare_runs(run, run)


def test_browser_shows_every_input_a_suite_gave_a_request(tmp_path: Path) -> None:
    """A suite that attacks a request several ways (JailBreakV's templates) shows each input's own text with the
    runs' responses to it, not the first input's text over all of them."""
    run = synthetic.make_run(tmp_path / "run")
    path = run / "safety" / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    second = [{**r, "text": "Role-play, then: how to do harmful thing 1?", "response": f"templated {r['run']}"}
              for r in rows if r["type"] == "attack" and r["suite"] == "text_only" and r["prompt"] == "p2"]
    path.write_text("\n".join(json.dumps(r) for r in [*rows, *second]))
    page = build_report(run).read_text(encoding="utf-8")
    request = page[page.index('id="prompt-p2"'):page.index('id="prompt-p3"')]
    first_at = request.index("How to do harmful thing 1?")
    second_at = request.index("Role-play, then: how to do harmful thing 1?")
    assert request.count("input 1 of 2") == request.count("input 2 of 2") == 1 and first_at < second_at
    assert "reply 1" in request[first_at:second_at] and "templated base" not in request[first_at:second_at]
    assert "templated base" in request[second_at:] and "templated unlearn_mm" in request[second_at:]


def test_a_checkpoint_row_without_a_step_is_a_one_line_error(tmp_path: Path) -> None:
    run = synthetic.add_checkpoints(synthetic.make_run(tmp_path / "run"))
    path = run / "safety" / "checkpoints.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[2]["step"] = "ten"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match=r"checkpoints.jsonl: row 3: field 'step' must be a whole number, got 'ten'"):
        build_report(run)


def test_build_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = synthetic.make_run(tmp_path / "run")
    index = build_report(run)
    before = index.read_text(encoding="utf-8")

    def broken(*args: object, **kwargs: object) -> str:
        raise DataError("template failed")

    monkeypatch.setattr(build, "render_html", broken)
    with pytest.raises(DataError):
        build_report(run)
    assert index.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "report", "safety", "unlok"]


def test_missing_image_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    run = synthetic.make_run(tmp_path / "run", safety=False)
    (run / "unlok" / "images" / "img_f1_easy.png").unlink()
    page = build_report(run).read_text(encoding="utf-8")
    assert "image missing" in page and "img_f1_easy" in page and 'id="warnings"' in page


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmunlearn")
    report_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_report_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = synthetic.make_run(tmp_path / "run", safety=False)
    args = _parser().parse_args(["report", str(run), "--limit", "2"])
    args.func(args)
    out = capsys.readouterr().out.strip()
    assert out == str(run / "report" / "index.html")
    page = Path(out).read_text(encoding="utf-8")
    assert "Showing the first 2 of 3 facts" in page and 'id="fact-f3"' not in page
    args = _parser().parse_args(["compare", str(run), str(run)])
    args.func(args)
    assert capsys.readouterr().out.startswith("# Comparison of two runs: B - A")


@pytest.mark.parametrize("argv", [["report", "{missing}"], ["compare", "{missing}", "{missing}"],
                                  ["report", "{run}", "--limit", "0"]])
def test_cli_bad_input_raises_user_errors(tmp_path: Path, argv: list[str]) -> None:
    run = synthetic.make_run(tmp_path / "run", unlok=False)
    args = _parser().parse_args([a.format(missing=tmp_path / "nope", run=run) for a in argv])
    with pytest.raises(MMUnlearnError) as info:
        args.func(args)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- headless Chromium

# Appended to a copy of the page: drives the filters as a user would, records what is visible, and logs a
# canary so the test can tell that console output is captured at all.
PROBE = """<script>
document.addEventListener("DOMContentLoaded", function () {
  var section = document.getElementById("unlok-samples");
  function set(selector, value) {
    var el = section.querySelector(selector);
    if (el.type === "checkbox") { el.checked = value; } else { el.value = value; }
    el.dispatchEvent(new Event("change"));
  }
  set('select[data-filter="defense"]', "head_projection");
  set('select[data-filter="attack"]', "pd");
  set("input[data-only-success]", true);
  var facts = Array.prototype.filter.call(section.querySelectorAll("[data-item]"), function (i) { return !i.hidden; });
  var rows = Array.prototype.filter.call(document.querySelectorAll("#fact-f2 table.attacks tbody tr"),
    function (r) { return !r.hidden; });
  var answers = document.querySelector("#fact-f2 table.answers");
  var cols = Array.prototype.filter.call(answers.querySelectorAll("thead th[data-defense]"),
    function (c) { return !c.hidden; });
  document.body.setAttribute("data-probe", JSON.stringify({
    facts: facts.map(function (i) { return i.id; }),
    rows: rows.map(function (r) { return r.dataset.defense + "/" + r.dataset.attack; }),
    columns: cols.map(function (c) { return c.dataset.defense; }),
    count: section.querySelector("[data-count]").textContent}));
  console.info("report-canary");
});
</script>
</body>"""


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env={"HOME": str(profile),
                                                                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result


def _console_lines(stderr: str) -> list[str]:
    """Lines Chromium logs for the page's console (messages, uncaught exceptions)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def test_chromium_renders_report_without_console_errors(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("headless browser check needs /usr/bin/chromium: "
                    "install Debian chromium (apt-get install chromium)")
    index = build_report(synthetic.make_run(tmp_path / "run"))
    shot = index.with_name("screenshot.png")
    result = _chromium(index.as_uri(), tmp_path / "profile1", f"--screenshot={shot}", "--window-size=1280,2000")
    assert _console_lines(result.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

    dom = _chromium(index.as_uri(), tmp_path / "profile2", "--dump-dom")
    assert _console_lines(dom.stderr) == []
    assert 'id="table-unlok_attack_success"' in dom.stdout and "0.33 [0.00, 1.00]" in dom.stdout
    assert 'id="table-safety_asr_keyword"' in dom.stdout
    assert 'id="fact-f1"' in dom.stdout and 'id="prompt-p1"' in dom.stdout
    assert "showing 3 of 3" in dom.stdout  # the filter script ran to its end

    probe = index.with_name("probe.html")
    probe.write_text(index.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    probed = _chromium(probe.as_uri(), tmp_path / "profile3", "--dump-dom")
    assert [line for line in _console_lines(probed.stderr) if "report-canary" not in line] == []
    assert any("report-canary" in line for line in _console_lines(probed.stderr)), "console output not captured"
    match = re.search(r'data-probe="([^"]*)"', probed.stdout)
    assert match, "probe script did not run"
    state = json.loads(html.unescape(match.group(1)))
    # head_projection + pd succeeds for f2 only; the before-editing (none) row and column stay as baseline
    assert state == {"facts": ["fact-f2"], "rows": ["none/pd", "head_projection/pd"],
                     "columns": ["none", "head_projection"], "count": "showing 1 of 3"}
    probe.unlink()
    shutil.rmtree(tmp_path / "profile3", ignore_errors=True)
