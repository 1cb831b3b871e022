"""The browser SDK and the patient chat page, served from sdk/ with ETags."""

import os

import tornado.web

SDK_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sdk")


class SdkFileHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path):
        # Revalidate on every load so a deploy reaches browsers at once;
        # the ETag keeps that to a 304 when nothing changed.
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")


ROUTES = [
    (r"/sdk/(im\.client\.js|chat\.html|chat\.css|chat\.js)", SdkFileHandler,
     {"path": SDK_DIR}),
    # Browsers keep the #token=... fragment across this redirect.
    (r"/chat", tornado.web.RedirectHandler, {"url": "/sdk/chat.html"}),
]
