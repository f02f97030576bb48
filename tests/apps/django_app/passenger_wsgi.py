"""A one-file Django app for the tests: CSRF-checked POSTs (Django compares the Origin
header with the scheme it believes) and a cookie session (signed cookies, no database)."""

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="for-the-tests-only-" + "k" * 40,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                "django.middleware.csrf.CsrfViewMiddleware"],
    SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
)

import django  # noqa: E402  (after settings, as Django wants)

django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import path  # noqa: E402


def form(request: HttpRequest) -> HttpResponse:
    return HttpResponse(get_token(request))


def submit(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"accepted, secure={request.is_secure()}")


def login(request: HttpRequest) -> HttpResponse:
    request.session["user"] = request.GET.get("user", "alice")
    return HttpResponse("logged in\n")


def whoami(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.session.get("user", "anonymous"))


urlpatterns = [path("form", form), path("submit", submit), path("login", login),
               path("whoami", whoami)]
application = get_wsgi_application()
