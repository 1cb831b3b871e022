"""docs/openapi.yaml is a valid OpenAPI document and matches the route table.

Every route of the Application (except the WebSocket, the SDK files and the
/chat redirect) must be described with each HTTP method its handler
implements, and every described path and method must exist.
"""

import itertools
import os
import re
from types import SimpleNamespace

import pytest
import tornado.web
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from conf import load_config
from handlers import make_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(ROOT, "docs", "openapi.yaml")

# Routes documented in docs/api.md and docs/sdk.md instead of the OpenAPI file.
UNDESCRIBED_ROUTES = re.compile(r"^/(ws|sdk/.*|chat)\$?$")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
PATH_PARAMETER = re.compile(r"\{([^}]+)\}")
# A route group of literal alternatives, such as (pm|gm|sm).
ALTERNATIVES = re.compile(r"\(([A-Za-z0-9_-]+(?:\|[A-Za-z0-9_-]+)+)\)")


@pytest.fixture(scope="module")
def spec():
    document, _ = read_from_filename(SPEC_PATH)
    return document


@pytest.fixture(scope="module")
def routes():
    """(regex, handler class) of every route the server registers."""
    config = load_config("test", environ={})
    app = make_app(SimpleNamespace(config=config))
    found = []
    for rule in app.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern
        if UNDESCRIBED_ROUTES.match(pattern):
            continue
        found.append((rule.matcher.regex, rule.target))
    return found


def route_variants(regex):
    """Split a route into one regex per combination of its literal alternatives.

    ``/chats/(pm|gm|sm)`` gives three regexes, so each of pm, gm and sm must
    be described, not just one of them.
    """
    pattern = regex.pattern
    groups = ALTERNATIVES.findall(pattern)
    variants = []
    for choice in itertools.product(*(group.split("|") for group in groups)):
        parts = iter(choice)
        variant = ALTERNATIVES.sub(lambda _: re.escape(next(parts)), pattern)
        variants.append(re.compile(variant))
    return variants


def implemented_methods(handler_class):
    """HTTP methods a handler defines itself, not Tornado's 405 defaults."""
    return {
        method for method in HTTP_METHODS
        if getattr(handler_class, method) is not getattr(tornado.web.RequestHandler, method)
    }


def described_methods(path_item):
    return {method for method in HTTP_METHODS if method in path_item}


def parameter_examples(spec, path, path_item):
    """Example values of a path's parameters, by name."""
    examples = {}
    operations = [path_item] + [path_item[m] for m in described_methods(path_item)]
    for holder in operations:
        for parameter in holder.get("parameters", []):
            if "$ref" in parameter:
                name = parameter["$ref"].rsplit("/", 1)[-1]
                parameter = spec["components"]["parameters"][name]
            if parameter["in"] == "path" and "example" in parameter:
                examples[parameter["name"]] = str(parameter["example"])
    return examples


def concrete_path(spec, path, path_item):
    """Fill a path template with its parameters' examples."""
    examples = parameter_examples(spec, path, path_item)
    missing = [name for name in PATH_PARAMETER.findall(path) if name not in examples]
    assert not missing, f"{path}: path parameters without an example: {missing}"
    return PATH_PARAMETER.sub(lambda match: examples[match.group(1)], path)


def matching_route(routes, path):
    for regex, handler_class in routes:
        if regex.fullmatch(path):
            return handler_class
    return None


def test_openapi_document_is_valid(spec):
    validate(spec)


def test_every_route_is_described(spec, routes):
    concrete = {
        concrete_path(spec, path, item): item for path, item in spec["paths"].items()
    }
    for route, handler_class in routes:
        for regex in route_variants(route):
            described = [item for path, item in concrete.items() if regex.fullmatch(path)]
            assert described, f"route {regex.pattern} is not described in openapi.yaml"

            methods = set().union(*(described_methods(item) for item in described))
            missing = implemented_methods(handler_class) - methods
            assert not missing, f"route {regex.pattern}: methods not described: {missing}"


def test_every_described_path_exists(spec, routes):
    for path, item in spec["paths"].items():
        handler_class = matching_route(routes, concrete_path(spec, path, item))
        assert handler_class is not None, f"{path} matches no route of the server"

        extra = described_methods(item) - implemented_methods(handler_class)
        assert not extra, f"{path}: described methods the server lacks: {extra}"


def test_every_operation_describes_an_error(spec):
    for path, item in spec["paths"].items():
        for method in described_methods(item):
            responses = item[method]["responses"]
            errors = [status for status in responses if status.startswith(("4", "5"))]
            assert errors, f"{method.upper()} {path} describes no error answer"
