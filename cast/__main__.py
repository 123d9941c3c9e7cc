from cast.cli import main

raise SystemExit(main())
