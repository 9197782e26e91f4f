"""Each setting is declared once: its views (resource field, dataclass, CLI option) name and default it alike."""

import dataclasses

import pytest

from cah_assets import cli
from cah_assets.resources import (
    SETTINGS_VIEWS,
    CandidateRules,
    ClipScorer,
    CommonCrawl,
    ComputeResource,
    HetznerFleet,
    ImageDownloader,
    PageRulesResource,
    TextClassifier,
)
from cah_resources.candidates.image_links import CandidateFilters
from cah_resources.clip_pairs.settings import SCORING_DEFAULTS, ScoringSettings
from cah_resources.crawl.common_crawl import CrawlSource
from cah_resources.flat_settings import flat_fields, from_flat
from cah_resources.fleet.settings import FLEET_ENV, ComputeSettings, FleetSettings, WorkerSettings
from cah_resources.image_shards.stage import ShardSettings
from cah_resources.page_scores.settings import ClassifierSettings
from cah_resources.pages.html_page import PageRules

# Each resource, the plain settings it hands to the code that runs, and the fields it declares itself.
VIEWS = {
    ImageDownloader: (ShardSettings, set()),
    HetznerFleet: (FleetSettings, {"segments_per_server"}),
    ComputeResource: (ComputeSettings, set()),
    CommonCrawl: (CrawlSource, set()),
    CandidateRules: (CandidateFilters, {"max_record_bytes"}),
    TextClassifier: (ClassifierSettings, set()),
    PageRulesResource: (PageRules, set()),
}


def _plain(resource) -> object:
    """The plain settings a resource instance builds, whatever its method is called."""
    for method in ("settings", "source", "filters", "rules"):
        if hasattr(resource, method):
            return getattr(resource, method)()
    raise AssertionError(f"{type(resource).__name__} builds no plain settings")


@pytest.mark.parametrize("resource", VIEWS, ids=lambda r: r.__name__)
def test_a_resource_has_one_field_per_setting_of_its_dataclass_with_its_default(resource):
    kind, own = VIEWS[resource]
    assert SETTINGS_VIEWS[resource][0] is kind
    renamed = SETTINGS_VIEWS[resource][1]
    settings = {renamed.get(f.name, f.name): f.default for f in flat_fields(kind)}
    fields = resource.model_fields
    assert set(fields) == set(settings) | own, "a setting is missing from the resource, or the resource has one more"
    assert {name: fields[name].default for name in settings} == settings


@pytest.mark.parametrize("resource", VIEWS, ids=lambda r: r.__name__)
def test_every_setting_is_described_once_and_the_ui_shows_its_description(resource):
    """The docstring under a setting's declaration is the resource field's description (the Launchpad's
    docs pane and the Deployment page show it): a setting without one fails here."""
    kind, _ = VIEWS[resource]
    renamed = SETTINGS_VIEWS[resource][1]
    undescribed = [f.name for f in flat_fields(kind) if len(f.doc) < 12]
    assert not undescribed, f"{kind.__name__}: add a docstring under {', '.join(undescribed)}"
    schema = resource.to_config_schema().as_field().config_type.fields
    for field in flat_fields(kind):
        assert schema[renamed.get(field.name, field.name)].description == field.doc
        assert "\n" not in field.doc and "  " not in field.doc  # one line, as the docs pane wraps it


@pytest.mark.parametrize("resource", VIEWS, ids=lambda r: r.__name__)
def test_a_resource_with_its_defaults_builds_the_dataclass_defaults(resource):
    kind, _ = VIEWS[resource]
    assert _plain(resource()) == kind()


@pytest.mark.parametrize("resource", VIEWS, ids=lambda r: r.__name__)
def test_every_setting_set_on_a_resource_reaches_the_plain_settings(resource):
    kind, _ = VIEWS[resource]
    renamed = SETTINGS_VIEWS[resource][1]
    for field in flat_fields(kind):
        changed = _another_value(field.default)
        if changed is None:
            continue
        try:
            built = _plain(resource(**{renamed.get(field.name, field.name): changed}))
        except ValueError:
            continue  # a value the dataclass validates (a mode, a name): reached it, and it said no
        assert _flat_value(built, field.name) == (tuple(changed) if isinstance(changed, list) else changed), field.name


def _another_value(default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 7
    if isinstance(default, float):
        return default + 1.5
    if isinstance(default, list):
        return [*default, "7"]  # digits: no case to normalise
    return None  # strings carry validated values (modes, URLs, names); the field-name check covers them


def _flat_value(settings, name):
    for spec in dataclasses.fields(settings):
        value = getattr(settings, spec.name)
        if spec.name == name:
            return value
        if dataclasses.is_dataclass(value):
            try:
                return _flat_value(value, name)
            except KeyError:
                pass
    raise KeyError(name)


def test_a_misspelt_setting_is_refused_not_dropped():
    with pytest.raises(ValueError, match="concurency: no such setting of ShardSettings"):
        from_flat(ShardSettings, {"concurency": 3})


def test_the_clip_scorer_has_every_scalar_setting_and_laions_defaults():
    per_category = {"models", "thresholds"}
    scalars = {f.name for f in dataclasses.fields(ScoringSettings)} - per_category
    fields = ClipScorer.model_fields
    assert scalars <= set(fields)
    assert {name: fields[name].default for name in scalars} == {n: getattr(SCORING_DEFAULTS, n) for n in scalars}
    assert ClipScorer().settings() == SCORING_DEFAULTS


def _options(command) -> dict:
    return {p.name: p for p in command.params if p.name not in ("help",)}


def test_cah_worker_has_one_option_per_worker_setting_with_its_default():
    options = _options(cli.worker)
    defaults = {f.name: f.default for f in dataclasses.fields(WorkerSettings)}
    assert set(options) == set(defaults)
    assert {name: options[name].default for name in defaults if name != "scheduler"} == {
        name: value for name, value in defaults.items() if name != "scheduler"
    }  # --scheduler is required: it has no default to keep


def test_cah_fleet_up_options_are_fleet_settings_with_their_defaults_and_variables():
    options = _options(cli.fleet_up_command)
    settings = {f.name: f.default for f in dataclasses.fields(FleetSettings)}
    command_only = {"count", "no_wait"}
    assert set(options) - command_only <= set(settings), "an option of `cah fleet up` is no fleet setting"
    for name, option in options.items():
        if name in command_only:
            continue
        default = list(settings[name]) if isinstance(settings[name], tuple) else settings[name]
        assert (list(option.default) if option.multiple else option.default) == default, name
        if name in FLEET_ENV:
            assert option.envvar == FLEET_ENV[name], name


def test_the_fleet_resource_reads_the_same_variables_as_the_cli():
    environ = {variable: "7" for variable in FLEET_ENV.values()} | {"CAH_FLEET": "other"}
    resource = HetznerFleet.from_env(environ)
    assert resource.name == "other" and resource.max_servers == 7 and resource.max_price_per_hour == 7.0
    assert resource.settings().name == "other"
