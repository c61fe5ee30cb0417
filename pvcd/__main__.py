from pvcd.main import main

raise SystemExit(main())
