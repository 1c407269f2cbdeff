from kdray.cli import main

raise SystemExit(main())
