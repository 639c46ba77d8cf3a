"""The dpkg adapter: Debian and Ubuntu images, distroless ones included (versions, the status file, apt
repositories, .deb packages). Import the modules themselves: this package imports none of them, so the version
order a report needs before the first registry request loads python-debian alone, not the status file's code."""
