"""RPM header tag numbers and data types (rpm 4.18's rpmtag.h), only those copa reads or writes.

Main-header tags are 1000 and up; a few (SIGSIZE, SIGMD5, the header digests and OpenPGP signatures) live
between 256 and 999 so the signature header's values can be merged into an installed package's header. The
signature header numbers some of its own tags differently (`Sig`), for historical reasons.
"""

from __future__ import annotations

import enum


class Type(enum.IntEnum):
    NULL = 0
    CHAR = 1
    INT8 = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    STRING = 6
    BIN = 7
    STRING_ARRAY = 8
    I18NSTRING = 9

    @property
    def size(self) -> int:
        """Bytes per element of a fixed-size type (also its alignment in the data store); 1 for the others."""
        return {Type.INT16: 2, Type.INT32: 4, Type.INT64: 8}.get(self, 1)


class Tag(enum.IntEnum):
    # Regions: the first index entry of a header, pointing at a trailer that says how many entries (and so how
    # many data bytes) the signed, immutable part covers.
    HEADERIMAGE = 61
    HEADERSIGNATURES = 62  # region of the signature header
    HEADERIMMUTABLE = 63  # region of the main header
    HEADERI18NTABLE = 100

    # Signature values as merged into an installed header (HEADER_SIGBASE 256 .. HEADER_TAGBASE 1000).
    SIGSIZE = 257
    SIGPGP = 259
    SIGMD5 = 261
    SIGGPG = 262
    SIGPGP5 = 263
    PUBKEYS = 266
    DSAHEADER = 267  # OpenPGP signature of the main header: DSA, ECDSA and EdDSA keys
    RSAHEADER = 268  # OpenPGP signature of the main header: RSA keys
    SHA1HEADER = 269  # hex sha1 of the main header
    LONGSIGSIZE = 270
    LONGARCHIVESIZE = 271
    SHA256HEADER = 273  # hex sha256 of the main header
    VERITYSIGNATURES = 276
    VERITYSIGNATUREALGO = 277

    NAME = 1000
    VERSION = 1001
    RELEASE = 1002
    EPOCH = 1003
    SUMMARY = 1004
    DESCRIPTION = 1005
    BUILDTIME = 1006
    BUILDHOST = 1007
    INSTALLTIME = 1008
    SIZE = 1009
    VENDOR = 1011
    LICENSE = 1014
    PACKAGER = 1015
    GROUP = 1016
    URL = 1020
    OS = 1021
    ARCH = 1022
    PREIN = 1023
    POSTIN = 1024
    PREUN = 1025
    POSTUN = 1026
    OLDFILENAMES = 1027
    FILESIZES = 1028
    FILESTATES = 1029
    FILEMODES = 1030
    FILERDEVS = 1033
    FILEMTIMES = 1034
    FILEDIGESTS = 1035
    FILELINKTOS = 1036
    FILEFLAGS = 1037
    FILEUSERNAME = 1039
    FILEGROUPNAME = 1040
    SOURCERPM = 1044
    FILEVERIFYFLAGS = 1045
    ARCHIVESIZE = 1046
    PROVIDENAME = 1047
    REQUIREFLAGS = 1048
    REQUIRENAME = 1049
    REQUIREVERSION = 1050
    CONFLICTFLAGS = 1053
    CONFLICTNAME = 1054
    CONFLICTVERSION = 1055
    RPMVERSION = 1064
    TRIGGERSCRIPTS = 1065
    TRIGGERNAME = 1066
    TRIGGERVERSION = 1067
    TRIGGERFLAGS = 1068
    TRIGGERINDEX = 1069
    VERIFYSCRIPT = 1079
    PREINPROG = 1085
    POSTINPROG = 1086
    PREUNPROG = 1087
    POSTUNPROG = 1088
    OBSOLETENAME = 1090
    TRIGGERSCRIPTPROG = 1092
    COOKIE = 1094
    FILEDEVICES = 1095
    FILEINODES = 1096
    FILELANGS = 1097
    PREFIXES = 1098
    INSTPREFIXES = 1099
    PROVIDEFLAGS = 1112
    PROVIDEVERSION = 1113
    OBSOLETEFLAGS = 1114
    OBSOLETEVERSION = 1115
    DIRINDEXES = 1116
    BASENAMES = 1117
    DIRNAMES = 1118
    OPTFLAGS = 1122
    PAYLOADFORMAT = 1124
    PAYLOADCOMPRESSOR = 1125
    PAYLOADFLAGS = 1126
    INSTALLCOLOR = 1127
    INSTALLTID = 1128
    REMOVETID = 1129
    PLATFORM = 1132
    FILECOLORS = 1140
    FILECLASS = 1141
    CLASSDICT = 1142
    FILEDEPENDSX = 1143
    FILEDEPENDSN = 1144
    DEPENDSDICT = 1145
    SOURCEPKGID = 1146
    PRETRANS = 1151
    POSTTRANS = 1152
    PRETRANSPROG = 1153
    POSTTRANSPROG = 1154
    LONGFILESIZES = 5008
    LONGSIZE = 5009
    FILECAPS = 5010
    FILEDIGESTALGO = 5011
    RECOMMENDNAME = 5046
    RECOMMENDVERSION = 5047
    RECOMMENDFLAGS = 5048
    SUGGESTNAME = 5049
    SUGGESTVERSION = 5050
    SUGGESTFLAGS = 5051
    SUPPLEMENTNAME = 5052
    SUPPLEMENTVERSION = 5053
    SUPPLEMENTFLAGS = 5054
    ENHANCENAME = 5055
    ENHANCEVERSION = 5056
    ENHANCEFLAGS = 5057
    ENCODING = 5062
    FILETRIGGERSCRIPTS = 5066
    FILETRIGGERNAME = 5069
    TRANSFILETRIGGERNAME = 5079
    FILESIGNATURES = 5090
    FILESIGNATURELENGTH = 5091
    PAYLOADDIGEST = 5092  # hex digests of the compressed payload
    PAYLOADDIGESTALGO = 5093
    MODULARITYLABEL = 5096
    PAYLOADDIGESTALT = 5097  # hex digests of the uncompressed payload


class Sig(enum.IntEnum):
    """Tags only the signature header uses (the rest it shares with Tag: DSAHEADER, RSAHEADER, SHA1HEADER,
    SHA256HEADER, LONGSIGSIZE, LONGARCHIVESIZE...)."""

    SIZE = 1000  # header + compressed payload bytes
    LEMD5_1 = 1001
    PGP = 1002  # legacy OpenPGP signature of header + payload
    LEMD5_2 = 1003
    MD5 = 1004  # md5 of header + compressed payload
    GPG = 1005  # legacy OpenPGP (DSA) signature of header + payload
    PGP5 = 1006
    PAYLOADSIZE = 1007  # uncompressed payload bytes
    RESERVEDSPACE = 1008  # zeros rpmsign overwrites with signatures, so signing keeps the file size
    FILESIGNATURES = 274
    FILESIGNATURELENGTH = 275


# Where a signature-header tag goes when rpm merges it into the installed header (headerMergeLegacySigs):
# these are renumbered; any other tag from 256 up to 999 keeps its number; the rest (1001, 1003, 1006,
# RESERVEDSPACE...) is dropped.
SIG_TO_HEADER: dict[int, int] = {
    Sig.SIZE: Tag.SIGSIZE,
    Sig.PGP: Tag.SIGPGP,
    Sig.MD5: Tag.SIGMD5,
    Sig.GPG: Tag.SIGGPG,
    Sig.PGP5: Tag.SIGPGP5,
    Sig.PAYLOADSIZE: Tag.ARCHIVESIZE,
    Sig.FILESIGNATURES: Tag.FILESIGNATURES,
    Sig.FILESIGNATURELENGTH: Tag.FILESIGNATURELENGTH,
}
HEADER_SIGBASE = 256
HEADER_TAGBASE = 1000


class FileFlag(enum.IntFlag):
    """RPMTAG_FILEFLAGS bits (%config, %doc...)."""

    CONFIG = 1 << 0
    DOC = 1 << 1
    ICON = 1 << 2
    MISSINGOK = 1 << 3
    NOREPLACE = 1 << 4
    SPECFILE = 1 << 5
    GHOST = 1 << 6
    LICENSE = 1 << 7
    README = 1 << 8
    PUBKEY = 1 << 11
    ARTIFACT = 1 << 12


class FileState(enum.IntEnum):
    """RPMTAG_FILESTATES values in an installed header."""

    NORMAL = 0
    REPLACED = 1
    NOTINSTALLED = 2
    NETSHARED = 3
    WRONGCOLOR = 4


class DigestAlgo(enum.IntEnum):
    """OpenPGP hash algorithm ids, as FILEDIGESTALGO and PAYLOADDIGESTALGO name them."""

    MD5 = 1
    SHA1 = 2
    SHA256 = 8
    SHA384 = 9
    SHA512 = 10
    SHA224 = 11
