"""GBW's cost on top of the plain loss: ``gbw bench overhead`` (see ``gbw.bench.overhead``)."""

from gbw.bench.overhead import main

if __name__ == "__main__":
    main()
