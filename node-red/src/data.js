// Every page's shared data fields (build_flows.py puts them into each page's `data()`).
model: null, now: Date.now(), offset: 0, received: 0, ticker: null,
confirming: null, operator: '', askingName: false, nameInput: '', pending: null, local: {},
