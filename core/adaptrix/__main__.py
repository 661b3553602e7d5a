from adaptrix.cli.main import main

raise SystemExit(main())
