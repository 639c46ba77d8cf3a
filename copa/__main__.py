from copa.cli import main

raise SystemExit(main())
