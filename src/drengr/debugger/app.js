// The live debugger's script: no build step, no dependency (drengr/debugger/__init__.py says what it does).
'use strict'
;(function () {
  const root = document.getElementById('main').dataset.root || ''
  const $ = (id) => document.getElementById(id)
  const MAX_ROWS = 200
  const COLORS = ['#0a5bd6', '#e8710a', '#1a7f37', '#a40e8c', '#b3261e', '#5b4bd6', '#8c959f']
  let key = null
  let cursor = null
  let paused = false
  let shown = [] // the events in the table, newest first
  let pending = [] // arrived while paused, oldest first
  let filters = ''
  let zone = 'utc'
  let lastDrops = { counts: {}, reasons: {}, recent: [] }
  let lastChart = null
  let opened = null // the event shown in the detail panel
  let timers = []
  let lastStats = 0
  let generation = 0 // a sign-out or a new sign-in abandons the polls of the previous one

  function say(text, isError) {
    const status = $('status')
    status.textContent = text
    status.className = 'status' + (isError ? ' error' : '')
  }

  function el(tag, text, attrs) {
    const node = document.createElement(tag)
    if (text !== undefined && text !== null) node.textContent = String(text)
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value)
    return node
  }

  async function api(path) {
    const response = await fetch(root + path, {
      headers: { Authorization: 'Bearer ' + key, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    })
    if (response.status === 401) {
      const error = new Error('unauthorized')
      error.unauthorized = true
      throw error
    }
    if (!response.ok) throw new Error('HTTP ' + response.status)
    return response.json()
  }

  function refused() {
    const typed = key || ''
    stop()
    key = null
    $('live').hidden = true
    $('signin').hidden = false
    if (typed.startsWith('drengr_pk_')) {
      say('Refused: that is a publishable key. Publishable keys are public and cannot open the debugger; use a secret key (drengr_sk_…).', true)
    } else {
      say('Refused: that is not an active secret key of this server. Check it, or create one with drengr keys create --kind secret.', true)
    }
    $('key').focus()
  }

  const pad = (n, width) => String(n).padStart(width || 2, '0')

  // A stored time (`2026-11-26T02:50:53.123Z`) as UTC or as this browser's local time.
  function when(iso, withDate) {
    if (zone === 'utc') return iso.replace('T', ' ').slice(withDate ? 0 : 11, 23)
    const d = new Date(iso)
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time
  }

  function minuteLabel(slot) {
    return when(slot + ':00.000Z', false).slice(0, 5)
  }

  function number(value) {
    return typeof value === 'number' ? value.toLocaleString('en-US', { maximumFractionDigits: 6 }) : String(value)
  }

  // dims and measures as `key: value` lines that wrap between words, not as JSON cut mid-word.
  function keyValues(object) {
    const list = el('ul', null, { class: 'kv' })
    for (const [name, value] of Object.entries(object || {})) {
      const item = el('li')
      item.append(el('b', name))
      item.append(document.createTextNode(': ' + (typeof value === 'string' ? value : number(value))))
      list.append(item)
    }
    return list
  }

  function eventRow(event, fresh) {
    const tr = el('tr', null, { 'data-seq': String(event.seq), 'data-event-name': event.event_name })
    if (fresh) tr.className = 'new'
    const received = el('td')
    const open = el('button', when(event.received_at, false), {
      type: 'button', class: 'open', 'aria-label': `Open ${event.event_name}, received ${when(event.received_at, true)}`,
    })
    open.addEventListener('click', () => showDetail(event))
    received.append(open)
    tr.append(received)
    tr.append(el('td', when(event.occurred_at, true)))
    const name = el('td')
    name.append(el('strong', event.event_name))
    tr.append(name)
    tr.append(el('td', event.event_type))
    const ids = el('td')
    ids.append(el('div', event.external_id === null ? '—' : event.external_id))
    ids.append(el('div', event.install_id, { class: 'muted' }))
    tr.append(ids)
    tr.append(el('td', event.library === null ? '—' : event.library, { class: 'library' }))
    const dims = el('td', null, { class: 'dims' })
    dims.append(keyValues(event.dims))
    tr.append(dims)
    const measures = el('td', null, { class: 'measures' })
    measures.append(keyValues(event.measures))
    tr.append(measures)
    return tr
  }

  function render(fresh) {
    const body = $('events').tBodies[0]
    body.replaceChildren(...shown.map((event) => eventRow(event, fresh && fresh.has(event.seq))))
    $('events-empty').hidden = shown.length > 0
  }

  function addEvents(events, fresh) {
    // `events` is oldest first; the table is newest first.
    shown = events.slice().reverse().concat(shown).slice(0, MAX_ROWS)
    render(fresh ? new Set(events.map((event) => event.seq)) : null)
  }

  function showPending() {
    $('pending').textContent = paused ? (pending.length ? `${pending.length.toLocaleString('en-US')} new` : 'Paused') : ''
  }

  function fieldRow(body, name, value) {
    const tr = el('tr')
    tr.append(el('th', name, { scope: 'row' }))
    tr.append(el('td', value === null || value === undefined || value === '' ? '—' : value))
    body.append(tr)
  }

  // The stored row as a table, and what the server left out of it (this process's recent drop samples).
  function showDetail(event) {
    opened = event
    $('detail-title').textContent = 'Event: ' + event.event_name
    const fields = $('detail-fields').tBodies[0]
    fields.replaceChildren()
    fieldRow(fields, 'Event name', event.event_name)
    fieldRow(fields, 'Type', event.event_type)
    fieldRow(fields, 'User id (external_id)', event.external_id)
    fieldRow(fields, 'Install id', event.install_id)
    fieldRow(fields, 'Occurred (client clock)', when(event.occurred_at, true) + (zone === 'utc' ? ' UTC' : ''))
    fieldRow(fields, 'Received (server clock)', when(event.received_at, true) + (zone === 'utc' ? ' UTC' : ''))
    fieldRow(fields, 'Library', event.library)
    fieldRow(fields, 'Event id', event.event_id)
    fieldRow(fields, 'Seq', String(event.seq))
    for (const [table, object] of [['detail-dims', event.dims], ['detail-measures', event.measures]]) {
      const body = $(table).tBodies[0]
      body.replaceChildren()
      for (const [name, value] of Object.entries(object || {})) {
        const tr = el('tr')
        tr.append(el('td', name))
        tr.append(el('td', typeof value === 'string' ? value : number(value)))
        body.append(tr)
      }
      if (!body.rows.length) fieldRow(body, '(none)', '')
    }
    const stripped = $('detail-stripped')
    stripped.replaceChildren(el('h3', 'Left out of this event'))
    const list = el('ul')
    for (const sample of lastDrops.recent) {
      for (const lost of sample.events || []) {
        if (lost.event_id === event.event_id) list.append(el('li', `${lost.keys.join(', ')} (${sample.reason}: ${sample.description})`))
      }
    }
    if (list.children.length) stripped.append(list)
    else stripped.append(el('p', 'Nothing, as far as this server process remembers (its last 100 drop samples).', { class: 'muted' }))
    $('detail').hidden = false
    $('detail').focus()
  }

  function showDrops(data) {
    lastDrops = data
    const counts = $('drop-counts')
    counts.replaceChildren()
    for (const [reason, count] of Object.entries(data.counts)) {
      counts.append(el('li', reason + ': ' + number(count), { 'data-reason': reason, title: data.reasons[reason] || reason }))
    }
    const body = $('drops').tBodies[0]
    body.replaceChildren()
    for (const sample of data.recent) {
      const tr = el('tr', null, { 'data-reason': sample.reason })
      tr.append(el('td', when(sample.at, false).slice(0, 8)))
      const reason = el('td')
      reason.append(el('strong', sample.reason))
      reason.append(el('div', sample.description, { class: 'muted' }))
      tr.append(reason)
      tr.append(el('td', sample.count))
      const keys = el('td', sample.keys.join(', ') || '—')
      // Which stored event lost which keys (names only): its event_id, as the events table shows it.
      for (const lost of sample.events || []) {
        const line = el('div', null, { class: 'muted stripped-event' })
        line.append(el('code', lost.event_id))
        line.append(document.createTextNode(' lost ' + lost.keys.join(', ')))
        keys.append(line)
      }
      tr.append(keys)
      const where = el('td')
      where.append(el('code', sample.path))
      where.append(el('div', sample.library || '(no User-Agent)', { class: 'muted' }))
      tr.append(where)
      body.append(tr)
    }
    $('drops-empty').hidden = data.recent.length > 0
  }

  const SVG = 'http://www.w3.org/2000/svg'
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag)
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value))
    if (text !== undefined) node.textContent = text
    return node
  }

  function showChart(stats) {
    lastChart = stats
    // 31 one-minute slots ending at the server's current minute (the server's clock, not the browser's).
    const start = Math.floor(Date.parse(stats.since) / 60000) * 60000
    const slots = []
    for (let i = 0; i <= 30; i++) slots.push(new Date(start + i * 60000).toISOString().slice(0, 16))
    const totals = {}
    for (const point of stats.series) totals[point.event_name] = (totals[point.event_name] || 0) + point.count
    const names = Object.keys(totals).sort((a, b) => totals[b] - totals[a] || (a < b ? -1 : 1))
    const shown = names.slice(0, COLORS.length - 1)
    const colorOf = (name) => (shown.includes(name) ? COLORS[shown.indexOf(name)] : COLORS[COLORS.length - 1])
    const cells = {}
    for (const point of stats.series) {
      const slot = point.bucket.slice(0, 16)
      const group = shown.includes(point.event_name) ? point.event_name : 'other'
      cells[slot] = cells[slot] || {}
      cells[slot][group] = (cells[slot][group] || 0) + point.count
    }
    const peak = Math.max(1, ...slots.map((s) => Object.values(cells[s] || {}).reduce((a, b) => a + b, 0)))
    const peakLabel = number(peak)
    // Room for the longest y label (`12,345,678`) at 11 px, whatever the count.
    const W = 760, H = 180, left = Math.max(40, 12 + 7 * peakLabel.length), bottom = 24, top = 10
    const barW = (W - left - 10) / slots.length
    const scale = (H - bottom - top) / peak
    const total = names.reduce((sum, n) => sum + totals[n], 0)
    const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: '100%', role: 'img', 'aria-labelledby': 'chart-svg-title' })
    chart.append(svg('title', { id: 'chart-svg-title' },
      `${number(total)} events in the last 30 minutes` + (names.length ? `, most ${names[0]} (${number(totals[names[0]])})` : '')))
    chart.append(svg('line', { x1: left, y1: H - bottom, x2: W - 10, y2: H - bottom, stroke: '#8c959f' }))
    chart.append(svg('text', { x: left - 6, y: top + 8, 'text-anchor': 'end', 'font-size': 11, fill: '#57606a', class: 'y-peak' }, peakLabel))
    chart.append(svg('text', { x: left - 6, y: H - bottom, 'text-anchor': 'end', 'font-size': 11, fill: '#57606a' }, '0'))
    slots.forEach((slot, i) => {
      let y = H - bottom
      const x = left + i * barW + 1
      for (const group of [...shown, 'other']) {
        const count = (cells[slot] || {})[group] || 0
        if (!count) continue
        const h = count * scale
        y -= h
        const rect = svg('rect', { x, y, width: Math.max(1, barW - 2), height: h, fill: colorOf(group), 'data-event-name': group })
        rect.append(svg('title', {}, `${minuteLabel(slot)} ${group}: ${number(count)}`))
        chart.append(rect)
      }
      if (i % 10 === 0 || i === slots.length - 1) {
        chart.append(svg('text', { x: x + barW / 2, y: H - 6, 'text-anchor': 'middle', 'font-size': 11, fill: '#57606a' }, minuteLabel(slot)))
      }
    })
    $('chart').replaceChildren(chart)
    const legend = $('legend')
    legend.replaceChildren()
    for (const group of names.length > shown.length ? [...shown, 'other'] : shown) {
      const item = el('li')
      item.append(el('span', null, { class: 'swatch', style: 'background:' + colorOf(group) }))
      item.append(document.createTextNode(group + ' (' + number(group === 'other'
        ? names.slice(shown.length).reduce((s, n) => s + totals[n], 0) : totals[group]) + ')'))
      legend.append(item)
    }
    const body = $('chart-table').tBodies[0]
    body.replaceChildren()
    for (const point of stats.series) {
      const tr = el('tr')
      tr.append(el('td', when(point.bucket, true).slice(0, 16)))
      tr.append(el('td', point.event_name))
      tr.append(el('td', number(point.count)))
      body.append(tr)
    }
  }

  async function poll(mine) {
    if (mine !== generation) return
    {
      try {
        const page = await api('/v1/events?order=asc&limit=500&cursor=' + encodeURIComponent(cursor) + filters)
        if (mine !== generation) return
        cursor = page.next_cursor
        if (paused) {
          // Still polled while paused: the page says how many arrived, and shows them on Resume.
          pending = pending.concat(page.events)
          showPending()
          timers.push(setTimeout(() => poll(mine), 1000))
          return
        }
        if (page.events.length) addEvents(page.events, true)
        showDrops(await api('/v1/drops?limit=50'))
        if (Date.now() - lastStats >= 5000 || page.events.length) {
          lastStats = Date.now()
          showChart(await api('/v1/stats?since=30m&interval=minute'))
        }
        $('updated').textContent = 'Updated ' + when(new Date().toISOString(), false).slice(0, 8) + (zone === 'utc' ? ' UTC' : '')
      } catch (error) {
        if (mine !== generation) return
        if (error.unauthorized) return refused() // revoked while open
        $('updated').textContent = 'Server unreachable; retrying…'
      }
    }
    timers.push(setTimeout(() => poll(mine), 1000))
  }

  function stop() {
    generation += 1
    for (const timer of timers) clearTimeout(timer)
    timers = []
  }

  async function open(typed) {
    stop()
    const mine = generation
    key = typed
    say('Checking the key…')
    try {
      const page = await api('/v1/events?order=desc&limit=50' + filters)
      if (mine !== generation) return
      shown = []
      pending = []
      addEvents(page.events.slice().reverse(), false)
      cursor = page.latest_cursor
      showDrops(await api('/v1/drops?limit=50'))
      lastStats = Date.now()
      showChart(await api('/v1/stats?since=30m&interval=minute'))
    } catch (error) {
      if (error.unauthorized) return refused()
      say('Cannot reach the read API (' + error.message + ').', true)
      return
    }
    $('live').hidden = false
    $('signin').hidden = true
    $('key').value = ''
    say('Signed in. Listening for events…')
    timers.push(setTimeout(() => poll(mine), 1000))
  }

  $('signin').addEventListener('submit', (event) => {
    event.preventDefault()
    const typed = $('key').value.trim()
    if (typed) open(typed)
  })
  $('pause').addEventListener('click', () => {
    paused = !paused
    $('pause').textContent = paused ? 'Resume' : 'Pause'
    $('pause').setAttribute('aria-pressed', String(paused))
    if (!paused && pending.length) addEvents(pending, true)
    if (!paused) pending = []
    showPending()
  })
  $('filters').addEventListener('submit', (event) => {
    event.preventDefault()
    const params = new URLSearchParams()
    for (const [name, id] of [['event_name', 'f-name'], ['event_type', 'f-type'], ['external_id', 'f-user']]) {
      const value = $(id).value.trim()
      if (value) params.set(name, value)
    }
    filters = params.toString() ? '&' + params.toString() : ''
    $('detail').hidden = true
    if (key) open(key) // the newest page under the new filters, then follow
  })
  $('tz').addEventListener('change', () => {
    zone = $('tz').value
    $('tz-name').textContent = zone === 'utc' ? 'UTC' : 'local (' + Intl.DateTimeFormat().resolvedOptions().timeZone + ')'
    render(null)
    if (lastChart) showChart(lastChart)
    showDrops(lastDrops)
    if (opened && !$('detail').hidden) showDetail(opened)
  })
  $('detail-close').addEventListener('click', () => {
    $('detail').hidden = true
    const row = document.querySelector(`#events tr[data-seq="${opened ? opened.seq : ''}"] button.open`)
    if (row) row.focus()
  })
  $('signout').addEventListener('click', () => {
    stop()
    key = null
    $('live').hidden = true
    $('signin').hidden = false
    shown = []
    pending = []
    render(null)
    $('detail').hidden = true
    say('Signed out.')
    $('key').focus()
  })
})()
