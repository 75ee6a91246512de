"""The OpenAPI side of the HTTP API, in one place: the responses the routers document
(``responses.py``), the completion of the generated description (``description.py``) and
the offline ``/docs`` page that shows it (``docs_page.py``)."""
