from seqbackbone.tasks.cli import main

raise SystemExit(main())
