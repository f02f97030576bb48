"""A one-file Django app for the benchmark: `GET /` runs one query of 20 rows against
sqlite and renders them through a template with a loop.

Settings are inline (DEBUG off, ALLOWED_HOSTS ['*'], the usual security and common
middleware). The database `bench.sqlite3` beside this file is built by the harness
(benchmarks/appsetup.py: a table `item`, 100 rows) in the app's temp copy before any server
starts; this file never writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import path

APP_DIR = Path(__file__).resolve().parent
DB_FILE = APP_DIR / "bench.sqlite3"
ROWS = 20

PAGE = """<!doctype html>
<html><head><title>{{ title }}</title></head>
<body>
<h1>{{ title }}</h1>
<table>
<tr><th>#</th><th>name</th><th>price</th><th>description</th></tr>
{% for item in items %}<tr class="{% cycle 'odd' 'even' %}">
<td>{{ forloop.counter }}</td><td>{{ item.name|title }}</td>
<td>{{ item.price|floatformat:2 }}</td><td>{{ item.description|truncatewords:8 }}</td>
</tr>
{% endfor %}</table>
<p>{{ items|length }} items, total {{ total|floatformat:2 }}</p>
</body></html>
"""

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    SECRET_KEY="benchmark-only-not-secret",
    ROOT_URLCONF=__name__,
    USE_TZ=True,
    INSTALLED_APPS=[],
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DB_FILE)}},
    TEMPLATES=[{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "OPTIONS": {"loaders": [("django.template.loaders.locmem.Loader",
                                 {"page.html": PAGE})]},
    }],
)
django.setup()


def index(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, price, description FROM item ORDER BY id LIMIT %s",
                       [ROWS])
        items: list[dict[str, Any]] = [
            {"name": name, "price": price, "description": description}
            for name, price, description in cursor.fetchall()]
    total = sum(item["price"] for item in items)
    return render(request, "page.html", {"title": "Items", "items": items, "total": total})


urlpatterns = [path("", index)]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings)

application = get_wsgi_application()
