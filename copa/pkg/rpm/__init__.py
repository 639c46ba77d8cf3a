"""The RPM family (RHEL/UBI, CentOS, Rocky, Alma, Oracle, Amazon Linux, Fedora): versions, headers, .rpm files,
the rpm database, repositories, and the adapter."""
