from langadapt.cli import main

raise SystemExit(main())
