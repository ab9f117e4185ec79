"""The MLflow UI link the commands print (`pipelines.tracking.ui_url`), opened in a real browser:
headless Chromium on a real `mlflow server` (the one `wganctl server` runs, `pipelines.tracking.server`)
on 127.0.0.1, over a store holding one finished train run.

The run is written by the train stage's own helper (`tracking.start_train_run`: its name, params and
dataset input, all that the run page and the Runs table show here) and closed, without training: no Ray.
Skipped where no Chromium is installed (`scripts/setup --test` installs Debian's `chromium`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.tracking.server import MlflowServer, ServerSettings
from tests.processes import free_port
from wgan.config import RunSettings, TrainConfig
from wgan.data.manifest import manifest_sha256

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (chromium or chromium-browser) on PATH; "
                                                          "scripts/setup --test installs Debian's chromium")]

# Virtual time for the page's scripts to load the run and render: it passes only while no request is
# pending, so a slow machine takes longer in real time, not less rendered.
RENDER_BUDGET_MS = 10_000
# Nothing but 127.0.0.1 resolves, and Chromium fetches nothing of its own (updates, sync).
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check"]
RUN_NAME_COLUMN, DATASET_COLUMN = "attributes.`Run Name`", "attributes.`Dataset`"  # the Runs table's ag-grid col-ids


@dataclass(frozen=True)
class ServedRun:
    uri: str
    experiment_id: str
    run_id: str
    run_name: str
    dataset: str  # as the UI names it: "fashion-mnist-28px (<digest>)"


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """`mlflow server` on a free loopback port over a new store with one finished train run."""
    tmp = tmp_path_factory.mktemp("mlflow-ui")
    settings = ServerSettings(port=free_port(), backend_store_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                              artifacts_destination=str(tmp / "artifacts"), workers=1).resolved(tmp)
    server = MlflowServer(settings, log_path=tmp / "server.log").start()
    try:
        manifest = {"format_version": 1, "dataset": "fashion-mnist", "splits": ["train"], "count": 512, "size": 28,
                    "channels": 1, "class_names": [str(k) for k in range(10)], "shards": []}
        data_dir = tmp / "fashion-mnist-28px"
        data_dir.mkdir()
        (data_dir / "manifest.json").write_text(json.dumps(manifest))
        sha256 = manifest_sha256(str(data_dir))
        server.wait_ready(timeout=120)
        client = MlflowClient(server.uri)
        run_id = tracking.start_train_run(client, "wganctl", TrainConfig(image_size=28, channels=1).resolved(),
                                          RunSettings(storage_path=str(tmp)), data_dir=str(data_dir),
                                          manifest=manifest, manifest_sha256=sha256)
        client.set_terminated(run_id, status="FINISHED")
        run = client.get_run(run_id)
        yield ServedRun(server.uri, run.info.experiment_id, run_id, run.info.run_name,
                        f"{tracking.dataset_name(manifest)} ({sha256[:tracking.DATASET_DIGEST_CHARS]})")
    finally:
        server.stop()


@pytest.fixture
def served(served_run, monkeypatch) -> ServedRun:
    """The served run, with MLFLOW_TRACKING_URI at its server, as a command run against it would have."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served_run.uri)
    return served_run


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        """The visible text, whitespace collapsed."""
        if self.tag in ("script", "style"):
            return ""
        return " ".join("".join(c if isinstance(c, str) else f" {c.text()} " for c in self.children).split())

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Descendants with the tag (any if None) and attributes; attribute names with `_` for `-`."""
        wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
        found = []
        for child in self.children:
            if isinstance(child, Element):
                if (tag is None or child.tag == tag) and all(child.attrs.get(k) == v for k, v in wanted.items()):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found


VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                       "wbr"})


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = [Element("#document", {})]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID_TAGS:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def open_page(url: str, profile: Path) -> Element:
    """The DOM of ``url`` once headless Chromium (a fresh profile: no remembered view) has rendered it."""
    assert urlsplit(url).hostname == "127.0.0.1", url
    shown = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *OFFLINE,
                            f"--user-data-dir={profile}", f"--virtual-time-budget={RENDER_BUDGET_MS}",
                            "--dump-dom", url],
                           check=False, capture_output=True, text=True, timeout=90)
    assert shown.returncode == 0 and "</html>" in shown.stdout, \
        f"chromium exited {shown.returncode} without a page: {shown.stderr[-2000:]}"
    parser = _TreeBuilder()
    parser.feed(shown.stdout)
    return parser.stack[0]


def title(page: Element) -> str:
    return page.find_all("title")[0].text()


def only(elements: list[Element], what: str) -> Element:
    assert len(elements) == 1, f"{len(elements)} {what}, not 1: {[e.text() for e in elements]}"
    return elements[0]


def test_the_printed_link_opens_the_run_in_the_training_view_whose_runs_table_shows_its_dataset(served, tmp_path):
    url = tracking.ui_url(served.run_id)  # its text is tests/test_console.py's; here what it shows
    assert url.startswith(f"{served.uri}/#/"), url
    experiment = f"#/experiments/{served.experiment_id}"

    run_page = open_page(url, tmp_path / "run")
    assert title(run_page) == f"Run {served.run_id} - MLflow"
    assert only(run_page.find_all(data_testid="runs-header"), "run headers").text() == served.run_name
    # "About this run": the Datasets heading, then the dataset with its digest and context
    datasets = only([e for e in run_page.find_all("div") if e.children and isinstance(e.children[0], Element)
                     and e.children[0].tag == "h4" and e.children[0].text() == "Datasets"], "Datasets sections")
    assert datasets.text() == f"Datasets {served.dataset} training"
    # the training view: the sidebar's current page is its Runs, and the breadcrumb leads back to them
    runs_link = only(run_page.find_all("a", aria_current="page"), "current pages in the sidebar")
    assert (runs_link.text(), runs_link.attrs["href"]) == ("Runs", f"{experiment}/runs?workflowType=machine_learning")
    crumb = only(run_page.find_all(data_testid="experiment-observatory-link-runs"), "breadcrumb links")
    assert crumb.text() == "Runs"

    table = open_page(f"{served.uri}/{runs_link.attrs['href']}", tmp_path / "runs")
    assert title(table) == f"Runs - Experiment {served.experiment_id} - MLflow"
    only(table.find_all(role="grid"), "runs tables")
    # the run's row (ag-grid renders its pinned and scrolling cells in two row elements of one row-id)
    cells = {cell.attrs["col-id"]: cell for row in table.find_all(role="row", row_id=served.run_id)
             for cell in row.find_all(role="gridcell")}
    assert {RUN_NAME_COLUMN, DATASET_COLUMN} <= cells.keys(), {k: c.text() for k, c in cells.items()}
    name = only(cells[RUN_NAME_COLUMN].find_all("a", href=f"{experiment}/runs/{served.run_id}"), "links to the run")
    assert name.text() == served.run_name
    dataset = only(cells[DATASET_COLUMN].find_all(title=served.dataset), "entries of the dataset")
    assert dataset.text() == served.dataset and cells[DATASET_COLUMN].text().startswith(f"{served.dataset} training")


def test_without_the_workflow_type_mlflow_shows_the_genai_view(served, tmp_path):
    """Why ui_url asks for workflowType=machine_learning: without it MLflow 3 opens the same run page,
    but in its GenAI view (the sidebar's current page and the breadcrumb are the experiment's evaluation
    runs, not its Runs), and the experiment itself on the GenAI overview, with no runs table."""
    url = tracking.ui_url(served.run_id)
    bare = url.removesuffix(f"?{tracking.UI_VIEW}")
    assert bare != url

    run_page = open_page(bare, tmp_path / "run")
    assert only(run_page.find_all(data_testid="runs-header"), "run headers").text() == served.run_name
    crumb = only(run_page.find_all(data_testid="experiment-observatory-link-runs"), "breadcrumb links")
    evaluation_runs = f"#/experiments/{served.experiment_id}/evaluation-runs"
    assert (crumb.text(), crumb.attrs["href"]) == ("Evaluations", evaluation_runs)
    current = only(run_page.find_all("a", aria_current="page"), "current pages in the sidebar")
    assert (current.text(), current.attrs["href"]) == ("Evaluation runs", evaluation_runs)
    assert not [a for a in run_page.find_all("a") if tracking.UI_VIEW in (a.attrs.get("href") or "")]

    experiment = open_page(f"{served.uri}/#/experiments/{served.experiment_id}", tmp_path / "experiment")
    assert title(experiment) == f"Overview - Experiment {served.experiment_id} - MLflow"
    assert experiment.find_all(role="grid") == [] and served.run_name not in experiment.text()
