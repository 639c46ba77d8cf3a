"""The rpm database of an image: read its installed headers and write an upgrade in the image's own format.

installed.py  finds the database (/var/lib/rpm, /usr/lib/sysimage/rpm) in the merged view, picks the backend,
              and turns an upgrade (hnums removed, installed header blobs added) into layer files and whiteouts
sqlite.py     rpmdb.sqlite (rpm >= 4.16) through Python's sqlite3 on a private copy
bdb.py        BerkeleyDB hash and btree files (rpm <= 4.16), read and written in Python
ndb.py        rpm's ndb Packages.db (SUSE), read and written in Python (rpm rebuilds its Index.db)
indexes.py    which values of a header rpm puts in each index, and with which (hnum, idx)
"""
