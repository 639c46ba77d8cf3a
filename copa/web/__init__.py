"""A small HTTP/1.1 client on the standard library's http.client: what the registry client, the package fetcher
and the end-of-life check need, and nothing more.

It replaces requests (and urllib3 under it), whose import alone took 90-120 ms of every run's start-up, most of it
for features copa never uses (cookies, character-set detection, HTTP/2 probing). What is kept is what a user
relies on: connections kept alive and pooled per host, proxies from the environment (http_proxy, https_proxy,
all_proxy, no_proxy), CA bundles and client certificates per request, redirects that drop credentials when they
leave the host, bounded bodies read one socket read at a time, and errors that say which step failed.
"""
