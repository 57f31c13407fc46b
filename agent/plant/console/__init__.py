"""The plant console: a small web page (plain HTML and JavaScript) and the server behind it."""
